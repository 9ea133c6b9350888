"""Catalogue in: columns and validation, photo reading and decoding, garment focus."""
