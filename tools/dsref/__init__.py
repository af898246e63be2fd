"""dsref: a float64 PyTorch reference of docs/method.md (DiffStyle), used to write the
golden files the Rust engine is tested against. See tools/README.md."""
