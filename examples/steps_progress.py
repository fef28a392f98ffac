"""Steps and progress: declare steps, move through them, watch progress on the event stream.

Run it with ``python examples/steps_progress.py``.
"""

from __future__ import annotations

import asyncio

from taskbuffer import StepSpec, Task, TaskEvent, TaskStep

STEPS: list[StepSpec] = [
    TaskStep(name="download", description="fetch the archive", percentage=50),
    TaskStep(name="verify", description="check the checksum", percentage=20),
    # A plain mapping works as well as a TaskStep.
    {"name": "install", "description": "unpack into site-packages", "percentage": 30},
]


async def install_package(package: str) -> str:
    installer.notify_step("download")
    print(f"  downloading {package}: progress {installer.get_progress()}%")
    await asyncio.sleep(0.02)
    installer.notify_step("verify")
    await asyncio.sleep(0.01)
    installer.notify_step("install")
    await asyncio.sleep(0.01)
    return f"{package} installed"


installer = Task(task_function=install_package, name="installer", steps=STEPS)


def on_event(event: TaskEvent) -> None:
    if event.type == "step":
        print(f"step -> {event.step_name} ({event.task.current_progress}%)")
    else:
        print(f"{event.type} ({event.task.current_progress}%)")


async def main() -> None:
    installer.event_subject.subscribe(on_event)

    print(await installer.trigger("reactivex"))
    print(f"progress after the run: {installer.get_progress()}%")

    for info in installer.get_steps_metadata():
        # start_time/end_time are epoch seconds; duration is seconds.
        assert info.duration is not None
        print(f"  {info.name:<9} {info.status:<9} {info.percentage:>3}%  {info.duration:.3f}s")

    try:
        installer.notify_step("reboot")
    except ValueError as error:
        print(f"ValueError: {error}")


if __name__ == "__main__":
    asyncio.run(main())
