"""A corpus's identity across machines (``ByteCorpus.identity()``: folder, content hash, documents per split),
how to say it in one line, and whether a recorded one holds the same text as another."""

from __future__ import annotations

from experiments.data.build import SPLITS

# why the same data options can give other text on another machine (said by every refusal of other text)
INSTALLED = "data=packages with data.distributions=null reads the installed site-packages"


def describe_identity(ident: dict) -> str:
    """``packages-4af6cc73a318 (content 1a2b..., 1,296 / 113 / 907 train / val / test documents)``; an identity
    recorded before content hashes existed has only its folder."""
    docs = ident.get("docs") or {}
    parts = [f"content {ident['content']}"] if ident.get("content") else []
    if docs:
        parts.append(" / ".join(f"{docs.get(s, 0):,}" for s in SPLITS) + f" {' / '.join(SPLITS)} documents")
    return f"{ident.get('folder')}" + (f" ({', '.join(parts)})" if parts else "")


def same_content(was: dict, here: dict) -> bool:
    """Whether a recorded identity and this one hold the same text: by content hash, or, for a record without
    one, by folder (the same sources, sizes and dates)."""
    if was.get("content"):
        return was["content"] == here.get("content")
    return was.get("folder") == here.get("folder")


__all__ = ["INSTALLED", "describe_identity", "same_content"]
