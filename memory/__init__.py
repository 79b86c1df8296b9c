"""kNN memory for the Focused Transformer: one API over an exact torch backend and faiss (imported lazily)."""
