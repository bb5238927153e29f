"""Benchmarks (``cmlearn bench``): speed and memory as ratios against a reference measured in
the same run. ``measure`` holds the workloads and instruments, ``suite`` the runner and report,
``ddp``, ``resnet``, ``graph`` and ``leaks`` one study each."""
