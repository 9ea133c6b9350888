"""The index folder: manifest, items and vectors, the change journal and its lock, Milvus as a vector store."""
