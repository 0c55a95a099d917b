"""Export of LLM versions: safetensors, GGUF f16 and q8_0 with an Ollama Modelfile, checked and logged to MLflow.

Versions are LoRA adapters on the tiny random Llama in the real sqlite MLflow registry of test_llm_versions (a copy
per test, artifacts included): version 2 is trained on top of 1, so its export merges both adapters; 3 has no
adapter artifact. GGUF files are read back with gguf.GGUFReader and loaded with transformers' GGUF loader. One
test exports the real bundled SmolLM2."""

from __future__ import annotations

import json
import re
import shutil
import time
import zipfile
from pathlib import Path

import gguf
import pytest
import torch
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _artifact_repos_cache as artifact_repositories
from streamlit.testing.v1 import AppTest
from test_llm_versions import NAME, registry_template  # noqa: F401 - the fixture
from transformers import AutoModelForCausalLM

from cli.main import main
from engine.answering.prompting import SYSTEM_PROMPT
from engine.core.settings import load_settings
from engine.llm.bundled import BUNDLED_LLM_GGUF, bundled_llm_dir, load_tokenizer
from engine.llm.loading import build_model, load_base_model
from engine.llm.versions import resolve_llm_version
from tests.rendered_markdown import parse
from training.export_artifacts import download_path, published_exports, safetensors_zip
from training.export_formats import TOLERANCES, ExportError, Tolerance
from training.export_pipeline import export_version, stop_tokens
from training.export_worker import export_jobs

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "versions.py")
MESSAGES = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Which model for fraud?"}]


@pytest.fixture
def settings(tmp_path, monkeypatch, registry_template, tiny_llama_folder):  # noqa: F811
    """A fresh workspace with its own copy of the registry and of its runs' artifacts (exports are logged there);
    the CLI and the export worker see the same workspace."""
    import sqlite3

    workspace = tmp_path / "workspace"
    shutil.copytree(registry_template.parent, workspace)
    old, new = registry_template.parent.as_uri(), workspace.as_uri()
    with sqlite3.connect(workspace / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
        db.execute("UPDATE model_versions SET source = replace(source, ?, ?), storage_location = replace(storage_location, ?, ?)",
                   (old, new, old, new))
    db.close()
    artifact_repositories.clear()  # MLflow caches them by run id, and the copy's runs keep the template's ids
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(workspace))
    monkeypatch.setenv("DEPLOYWISE_BASE_MODEL", str(tiny_llama_folder))
    monkeypatch.setenv("DEPLOYWISE_LLM_BACKEND", "transformers")  # a tiny HF folder has no GGUF file
    return load_settings()


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    with torch.inference_mode():
        return model(input_ids=torch.tensor([list(ids)])).logits[0]


def run_of(settings, number: str) -> str:
    return MlflowClient(tracking_uri=settings.tracking_uri).get_model_version(NAME, number).run_id


@pytest.mark.parametrize("fmt, weight_type", [("gguf-f16", "F16"), ("gguf-q8_0", "Q8_0")])
def test_gguf_round_trip_of_a_version_with_merged_adapters(settings, tiny_llama_folder, fmt, weight_type):
    export = export_version(settings, "2", fmt)
    folder = settings.workspace.resolve() / "exports" / "deploywise-llm-2" / fmt
    name = f"deploywise-llm-2-{weight_type.lower()}.gguf"
    assert export.folder == str(folder) and sorted(p.name for p in folder.iterdir()) == sorted([name, "Modelfile", "export.json"])
    assert [f.name for f in export.files] == [name, "Modelfile"]
    assert export.files[0].size == (folder / name).stat().st_size > 1_000_000

    # the check's figures; the adapters move the logits further than the format's tolerance allows, so a GGUF of
    # the bare base would fail the check
    check = export.check
    assert check.passed and check.prompts == 5 and check.positions > 150
    # (q8_0's top-1 on the tiny random model's near-flat logits varies with the session's adapters: 0.93-0.95 seen)
    assert check.min_cosine > (0.9999 if fmt == "gguf-f16" else 0.995) and check.top1_agreement >= (0.98 if fmt == "gguf-f16" else 0.9)
    tokenizer = load_tokenizer(str(tiny_llama_folder))
    merged, base = build_model(resolve_llm_version(settings, "2")), load_base_model(str(tiny_llama_folder))
    unmerged = torch.nn.functional.cosine_similarity(logits(merged, tokenizer), logits(base, tokenizer), dim=-1).min()
    print(fmt, check, float(unmerged))
    assert unmerged < TOLERANCES[fmt].min_cosine

    reader = gguf.GGUFReader(folder / name)
    assert reader.fields["general.architecture"].contents() == "llama"
    tensors = {t.name: (t.tensor_type.name, [int(n) for n in t.shape]) for t in reader.tensors}
    assert len(tensors) == 2 * 9 + 2  # 9 per block, token_embd and output_norm; the output is tied to token_embd
    assert tensors["token_embd.weight"] == (weight_type, [64, 49152])
    assert tensors["blk.1.attn_k.weight"] == (weight_type, [64, 32])  # 2 kv heads of 16
    assert tensors["blk.0.ffn_down.weight"] == (weight_type, [128, 64])
    assert tensors["blk.0.attn_norm.weight"] == ("F32", [64]) and tensors["output_norm.weight"] == ("F32", [64])
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert export.gguf == {"architecture": "llama", "tensor_count": 20, "tensor_types": {"F32": 5, weight_type: 15},
                           "vocab_size": 49152, "chat_template": True}

    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{name}\n")
    assert f'SYSTEM """{SYSTEM_PROMPT}"""' in modelfile
    assert re.findall(r'^PARAMETER stop "(.*)"$', modelfile, re.M) == ["<|im_end|>"] == stop_tokens(merged, tokenizer)
    assert "PARAMETER temperature 0" in modelfile.splitlines()
    # Ollama's TEMPLATE rendered for the chat's messages as Go's template engine would must give exactly what the
    # model's own chat template gives (Ollama puts SYSTEM first among the messages)
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)
    loop, tail = re.fullmatch(r"\{\{- range \.Messages \}\}(.*)\{\{ end \}\}(.*)", template, re.S).groups()
    rendered = "".join(loop.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"]) for m in MESSAGES) + tail
    assert rendered == tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)

    run_id = run_of(settings, "2")
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    logged = {a.path for a in client.list_artifacts(run_id, f"exports/{fmt}")}
    assert logged == {f"exports/{fmt}/{name}", f"exports/{fmt}/Modelfile", f"exports/{fmt}/export.json"}
    run = client.get_run(run_id)
    assert run.data.metrics[f"export.{fmt}.min_cosine"] == check.min_cosine
    assert run.data.metrics[f"export.{fmt}.top1_agreement"] == check.top1_agreement
    assert run.data.tags[f"export.{fmt}.sha256"] == export.files[0].sha256
    assert published_exports(settings, run_id) == [export]
    assert download_path(settings, export, "Modelfile").read_text() == modelfile  # what the page's button serves


def test_the_safetensors_folder_loads_and_gives_the_merged_models_logits(settings, tiny_llama_folder, tmp_path):
    out = tmp_path / "handoff"
    export = export_version(settings, "2", "safetensors", out)
    names = {f.name for f in export.files}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert sorted(p.name for p in out.iterdir()) == sorted(names | {"export.json"})
    assert export.check.passed and export.check.max_abs_diff < 1e-4 and export.check.top1_agreement == 1.0
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    merged = build_model(resolve_llm_version(settings, "2"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert torch.allclose(logits(loaded, tokenizer), logits(merged, tokenizer), atol=1e-5)
    assert tokenizer.chat_template == load_tokenizer(str(tiny_llama_folder)).chat_template
    logged = MlflowClient(tracking_uri=settings.tracking_uri).list_artifacts(run_of(settings, "2"), "exports/safetensors")
    assert {a.path.rsplit("/", 1)[1] for a in logged} == names | {"export.json"}
    with zipfile.ZipFile(safetensors_zip(settings, export)) as bundle:  # what the page's button serves
        assert sorted(bundle.namelist()) == sorted(f"deploywise-llm-2/{name}" for name in names)
        assert bundle.read("deploywise-llm-2/model.safetensors") == (out / "model.safetensors").read_bytes()


def test_refusals_are_one_line_and_leave_nothing_behind(settings, tmp_path, monkeypatch):
    exports = settings.workspace / "exports"
    for version, fmt, expected in (
        ("99", "gguf-f16", "the MLflow registry has no LLM version deploywise-llm/99"),
        ("latest", "gguf-f16", "'latest' is not an LLM version: give a version number, 'champion' or 'base'"),
        ("1", "gguf-q4", "unknown export format 'gguf-q4': choose safetensors, gguf-f16, gguf-q8_0"),
        ("3", "gguf-q8_0", "cannot export deploywise-llm/3 as gguf-q8_0: cannot fetch the adapter/ artifact of deploywise-llm/3"),
    ):
        with pytest.raises(ExportError) as refused:
            export_version(settings, version, fmt)
        assert str(refused.value).startswith(expected) and "\n" not in str(refused.value)
    assert not exports.exists() or not any(exports.rglob("*"))

    # a written model outside its tolerance is not published: no files, nothing logged
    monkeypatch.setitem(TOLERANCES, "safetensors", Tolerance(min_cosine=1.5, min_top1=1.0))
    with pytest.raises(ExportError, match=r"^the safetensors export of deploywise-llm/1 failed its logits check \(min cosine "
                                          r"0\.99999.*needs cosine >= 1\.5 and top-1 agreement >= 100%\); nothing was published$"):
        export_version(settings, "1", "safetensors")
    assert not exports.exists() or not any(exports.rglob("*"))
    assert MlflowClient(tracking_uri=settings.tracking_uri).list_artifacts(run_of(settings, "1"), "exports") == []

    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    with pytest.raises(ExportError, match=r"^cannot write to .*not-a-folder: File exists$"):
        export_version(settings, "1", "gguf-f16", a_file)

    # a disk that fills up midway: the first write past 1 MB fails (EFBIG, as ENOSPC would)
    import resource
    import signal

    out = tmp_path / "full"
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, limits[1]))
    try:
        with pytest.raises(ExportError) as full:
            export_version(settings, "1", "gguf-f16", out)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert str(full.value) == "cannot export deploywise-llm/1 as gguf-f16: File too large (os error 27)"
    assert not out.exists()


def test_another_architecture_is_refused_for_gguf(settings, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = load_tokenizer("bundled")
    folder = tmp_path / "tiny-qwen2"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    qwen = load_settings(workspace=settings.workspace, base_model=str(folder))
    with pytest.raises(ExportError, match=r"^cannot export base:tiny-qwen2 as gguf-f16: GGUF export supports the Llama "
                                          r"architecture only; this model is 'qwen2'$"):
        export_version(qwen, "base", "gguf-f16")
    assert not (settings.workspace / "exports").exists() or not any((settings.workspace / "exports").rglob("*"))


def test_cli_exports_and_refuses_with_exit_codes(settings, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", "1", "--format", "safetensors", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == "deploywise-llm/1" and printed["format"] == "safetensors" and printed["check"]["passed"]
    weights = next(f for f in printed["files"] if f["name"] == "model.safetensors")
    assert (out / "model.safetensors").stat().st_size == weights["size"]
    assert printed["run_id"] == run_of(settings, "1")

    assert main(["export", "42", "--format", "gguf-f16"]) == 2
    assert capsys.readouterr().err == "deploywise: the MLflow registry has no LLM version deploywise-llm/42\n"
    with pytest.raises(SystemExit) as bad_format:
        main(["export", "1", "--format", "onnx"])
    assert bad_format.value.code == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err


def test_the_versions_page_exports_out_of_process_and_offers_the_downloads(settings):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["settings"] = settings
    at.run()
    at.selectbox(key="versions_chosen").set_value("1").run()
    at.selectbox(key="export_format_1").set_value("gguf-q8_0").run()
    next(b for b in at.button if b.label == "Export").click().run()
    assert not at.exception, at.exception
    assert parse(at.success[0].value).visible == "Exporting deploywise-llm/1 as gguf-q8_0: the files are offered here once checked."
    deadline = time.monotonic() + 180
    while not (jobs := export_jobs(settings, "1"))[0].finished and time.monotonic() < deadline:
        time.sleep(1)
    assert jobs[0].state == "succeeded", jobs[0].error
    at.run()
    assert not at.exception, at.exception
    labels = [element.proto.label for element in at.get("download_button")]
    assert labels == ["Download deploywise-llm-1-q8_0.gguf", "Download Modelfile"]
    assert any("**gguf-q8_0**" in caption.value and "top-1 agreement" in caption.value for caption in at.caption)


def test_a_visitor_cannot_start_an_export(settings, real_access):
    def script(settings):
        import streamlit as st

        from engine.access.roles import AccessDenied
        from training.export_worker import start_export_job

        try:
            start_export_job(settings, "1", "gguf-f16")
            st.session_state["outcome"] = "started"
        except AccessDenied as error:
            st.session_state["outcome"] = str(error)

    at = AppTest.from_function(script, args=(settings,), default_timeout=30).run()
    assert at.session_state["outcome"] == "exporting an LLM version is for administrators"
    assert export_jobs(settings) == []


@pytest.mark.slow
def test_the_real_smollm2_base_survives_q8_0(tmp_path):
    """The bundled SmolLM2-135M: q8_0 keeps the next token at nearly every position, and the tokenizer written
    is the one of the published SmolLM2 GGUF (tokens, types, merges, special ids)."""
    settings = load_settings(workspace=tmp_path / "workspace")
    export = export_version(settings, "base", "gguf-q8_0")
    assert export.version == "base:SmolLM2-135M-Instruct" and export.run_id is None
    assert export.check.passed and export.check.top1_agreement >= 0.95, export.check
    ours = gguf.GGUFReader(tmp_path / "workspace/exports/base-SmolLM2-135M-Instruct/gguf-q8_0/base-SmolLM2-135M-Instruct-q8_0.gguf")
    published = gguf.GGUFReader(bundled_llm_dir() / BUNDLED_LLM_GGUF)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.chat_template",
                "tokenizer.ggml.pre", "tokenizer.ggml.add_space_prefix", "llama.context_length", "llama.rope.freq_base",
                "llama.attention.head_count_kv"):
        assert ours.fields[key].contents() == published.fields[key].contents(), key
    assert len(ours.tensors) == len(published.tensors) == 272
