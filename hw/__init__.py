"""Hardware layer: GPUs, codecs (PyAV on the CPU, NVDEC/NVENC through PyNvVideoCodec),
colour conversion in torch, and device memory helpers. No threads or queues here.

PyNvVideoCodec is imported lazily (`hw.nv_runtime`): importing it fails on machines
without the NVIDIA driver, and that must only mean "hardware codec unavailable".
"""
