"""Token-based recursive splitting: chunk sizes are counted in the base LLM's tokens (seed 002: 500 / 50)."""

from __future__ import annotations

from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter

from engine.knowledge.documents import Section


@dataclass(frozen=True)
class Chunk:
    text: str
    token_count: int
    source_id: str


class Chunker:
    """Splits sections on paragraph, line, sentence and word boundaries until each piece fits the token budget."""

    def __init__(self, tokenizer, chunk_tokens: int = 500, chunk_overlap: int = 50):
        if chunk_tokens <= 0 or not 0 <= chunk_overlap < chunk_tokens:
            raise ValueError(f"need 0 <= overlap ({chunk_overlap}) < chunk size ({chunk_tokens})")
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self._splitter = RecursiveCharacterTextSplitter(
            chunk_size=chunk_tokens,
            chunk_overlap=chunk_overlap,
            length_function=self.count_tokens,
            separators=["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""],
            keep_separator="end",
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def split(self, sections: list[Section]) -> list[Chunk]:
        """Chunks never cross sections, so a PDF chunk always cites the page it came from."""
        chunks = []
        for section in sections:
            for piece in self._splitter.split_text(section.text):
                piece = piece.strip()
                if piece:
                    chunks.append(Chunk(piece, self.count_tokens(piece), section.source.source_id))
        return chunks
