"""Settings come from env, .env and secrets.toml in that order; a bad value names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.core.settings import SettingsError, load_settings


def test_defaults():
    settings = load_settings()
    assert settings.workspace == Path("workspace")
    assert (settings.chunk_tokens, settings.chunk_overlap) == (500, 50)
    assert settings.knowledge_db == Path("workspace/knowledge.sqlite")
    assert settings.tracking_uri.startswith("sqlite:///") and settings.tracking_uri.endswith("workspace/mlflow.db")


def test_precedence_env_over_dotenv_over_secrets(monkeypatch, tmp_path):
    Path(".streamlit").mkdir()
    Path(".streamlit/secrets.toml").write_text('[deploywise]\nchunk_tokens = 300\nsearch_top_k = 5\nmax_upload_mb = 7\n')
    Path(".env").write_text("DEPLOYWISE_CHUNK_TOKENS=400\nDEPLOYWISE_SEARCH_TOP_K=6\n")
    monkeypatch.setenv("DEPLOYWISE_CHUNK_TOKENS", "450")
    settings = load_settings()
    assert (settings.chunk_tokens, settings.search_top_k, settings.max_upload_mb) == (450, 6, 7.0)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("DEPLOYWISE_CHUNK_TOKENS", "abc", "DEPLOYWISE_CHUNK_TOKENS"),
        ("DEPLOYWISE_CHUNK_TOKENS", "-5", "DEPLOYWISE_CHUNK_TOKENS: Input should be greater than 0"),
        ("DEPLOYWISE_CHUNK_OVERLAP", "600", "DEPLOYWISE_CHUNK_OVERLAP must be smaller than DEPLOYWISE_CHUNK_TOKENS"),
        ("DEPLOYWISE_MAX_UPLOAD_MB", "0", "DEPLOYWISE_MAX_UPLOAD_MB"),
        ("DEPLOYWISE_BASE_MODEL", "/no/such/model", "DEPLOYWISE_BASE_MODEL: is neither 'bundled' nor an existing model folder"),
    ],
)
def test_a_bad_value_names_its_key(monkeypatch, key, value, expected):
    monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_workspace_that_is_a_file_is_refused(monkeypatch):
    Path("not-a-folder").write_text("x")
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", "not-a-folder")
    with pytest.raises(SettingsError, match="DEPLOYWISE_WORKSPACE: exists and is not a folder"):
        load_settings()


def test_malformed_secrets_file_is_reported():
    Path(".streamlit").mkdir()
    Path(".streamlit/secrets.toml").write_text("[deploywise\nchunk_tokens = 3")
    with pytest.raises(SettingsError, match="secrets.toml: not valid TOML"):
        load_settings()


def test_ensure_workspace_creates_its_folders(tmp_path):
    settings = load_settings(workspace=tmp_path / "ws")
    settings.ensure_workspace()
    assert all((tmp_path / "ws" / sub).is_dir() for sub in ("models", "runs", "exports"))
