// hspace kernels (being written).
