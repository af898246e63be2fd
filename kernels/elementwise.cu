// elementwise kernels (being written).
