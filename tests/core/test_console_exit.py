"""How the console script's process ends (``nasprobe.cli.run``): once a command has returned
it leaves without the interpreter's teardown, and keeps what a normal exit gives: the exit code,
everything printed, worker threads finished, ``atexit`` handlers run; under a profiler it
exits the normal way, so the profile is still printed. (What the teardown costs is measured by
hand, docs/speed.md.)"""

import subprocess
import sys
import textwrap

import nasprobe

# A script that ends through the console script's entry point, with a thread still working and
# an atexit handler.
SCRIPT = textwrap.dedent("""
    import atexit, sys, threading, time

    atexit.register(print, "atexit handler ran")
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
    sys.argv = ["nasprobe", *sys.argv[1:]]
    from nasprobe.cli import run
    run()
""")


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def test_a_probe_job_exits_0_with_its_store_written(conv_run, labelled_probe, tmp_path):
    folder, _, _ = conv_run
    out = tmp_path / "nas.zarr"
    res = _run("-m", "nasprobe", "probe", str(folder), "--probe", str(labelled_probe), "--out",
               str(out), "--run", "r")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{out}\n"
    assert "run r: 3 epochs to probe" in res.stderr
    ds = nasprobe.open_store(out).to_dataset()
    assert ds.sizes["epoch"] == 3 and bool(ds["probed"].all())


def test_bad_input_still_exits_2_with_its_message(tmp_path):
    res = _run("-m", "nasprobe", "info", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.startswith("nasprobe: error:") and str(tmp_path) in res.stderr


def test_threads_finish_and_atexit_handlers_run(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    res = _run(str(script), "--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"nasprobe, version {nasprobe.__version__}",
                                       "thread finished", "atexit handler ran"]
    res = _run(str(script), "no-such-command")
    assert res.returncode == 2 and "No such command" in res.stderr
    assert res.stdout.splitlines() == ["thread finished", "atexit handler ran"]


def test_under_a_profiler_the_process_exits_the_normal_way(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    res = _run("-m", "cProfile", str(script), "--version")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"nasprobe, version {nasprobe.__version__}"
    assert any("function calls" in line for line in lines)  # cProfile's report
    assert {"thread finished", "atexit handler ran"} <= set(lines)


def test_main_still_raises_system_exit_for_a_caller_to_catch():
    code = ("from nasprobe.cli import main\ntry:\n    main(['--version'])\n"
            "except SystemExit as exc:\n    print('caught', exc.code)\n")
    res = _run("-c", code)
    assert res.returncode == 0 and res.stdout.splitlines()[-1] == "caught 0"
