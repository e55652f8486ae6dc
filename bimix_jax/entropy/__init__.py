"""Training-free entropy proxies: token-count entropies SE/CE/JE (`counts`) and the von Neumann entropy of
document embeddings (`vne`)."""
