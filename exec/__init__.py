"""ppc.exec: the executor that runs compiled programs under torch.distributed."""
