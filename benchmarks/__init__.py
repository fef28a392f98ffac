"""taskbuffer's benchmarks: the cost of running work through it, against plain asyncio.

Run them all with ``python -m benchmarks`` (or ``python benchmarks/run.py``); ``--help`` lists
the options. Every workload runs in a fresh process, alternating with its baseline, and the
figures that matter are ratios to that baseline measured in the same run.

Modules:

- :mod:`benchmarks.specs`: what each workload is, its sizes and its target (no taskbuffer import).
- :mod:`benchmarks.workloads`: the workloads themselves, taskbuffer side and baseline side.
- :mod:`benchmarks.child`: the entry point of one measuring process.
- :mod:`benchmarks.harness`: starts those processes, alternating A B A B ...
- :mod:`benchmarks.report`: medians, ratios, targets, the table and the JSON.
- :mod:`benchmarks.run`: the command line.
"""
