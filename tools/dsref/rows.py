"""Which rows of the content's h trajectory the method goldens keep (torch-free, so that
tests and tools agree without PyTorch). Five rows spread over the trajectory check the
inversion at its start, middle and end at a tenth of the bytes of all of them."""


def h_rows(k):
    """Indices into the ascending key list of a trajectory of k entries."""
    return sorted({0, k // 4, k // 2, (3 * k) // 4, k - 1})
