"""The static Huffman code: defined in the torch-free `engine.entropy.huffman`, re-exported here."""

from engine.entropy.huffman import HuffmanCodec

__all__ = ["HuffmanCodec"]
