"""The CIFAR-100 benchmark of hf-kd, a thin client of the library: one module per stage
(``run``: accuracy; ``transfer``: linear probe; ``publish``: Hub), with its configuration,
data, records and reports. Entry point: ``python benchmarks/accuracy.py`` (see ``cli``)."""
