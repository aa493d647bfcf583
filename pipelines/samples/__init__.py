"""The samples job (`job`) and its generators: FIM, repository-level FIM, commits, SFT data, mixture, packing."""
