// norm kernels (being written).
