"""ppc.frontend: trace a model with torch.fx and split it into pipeline stages (imports torch)."""
