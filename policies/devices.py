"""Which GPU a process uses: fixed once, at its start, before anything touches CUDA.

Light on purpose (torch is imported inside the function): `editloop worker` calls it first.
"""


def pin_cuda_device(device: str) -> None:
    """Make the GPU named by `device` (`cuda:N`) this process's current CUDA device.

    Done before any other CUDA call, it keeps every allocation that names no index (a library's
    `torch.device("cuda")`, a stray `.cuda()`, the CUDA context itself) off GPU 0, which other
    workers use. A no-op for `cpu`, an empty name, a name without an index, or a GPU that is not
    there (the command's own device check reports that, with the fix).
    """
    if not device.startswith("cuda"):
        return
    import torch

    try:
        index = torch.device(device).index
    except RuntimeError:
        return
    if index is None or not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return
    torch.cuda.set_device(index)
