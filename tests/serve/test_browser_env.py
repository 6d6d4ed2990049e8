"""The browser test's missing-Chromium rules: ``.ci/ensure-browser`` installs it when it can; when
it cannot, the test is skipped with the reason, but under CI a missing browser fails."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.browser_env import check_browser

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "ensure-browser"


def _executable(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_browser(tmp_path) -> dict[str, str]:
    """Paths of a Chromium and chromedriver that do not exist (yet)."""
    return {"MACO_CHROMIUM": str(tmp_path / "chromium"), "MACO_CHROMEDRIVER": str(tmp_path / "chromedriver")}


def test_a_present_browser_runs(fake_browser):
    for path in fake_browser.values():
        _executable(Path(path))
    assert check_browser({**fake_browser, "CI": "true"}).action == "run"
    assert check_browser(fake_browser).action == "run"


def test_a_missing_browser_is_skipped_loudly_outside_ci(fake_browser):
    _executable(Path(fake_browser["MACO_CHROMIUM"]))  # the driver alone is missing
    for env in (fake_browser, {**fake_browser, "CI": "false"}, {**fake_browser, "CI": ""}):
        check = check_browser(env)
        assert check.action == "skip"
        assert check.reason.startswith("BROWSER TEST NOT RUN: ")
        assert fake_browser["MACO_CHROMEDRIVER"] in check.reason
        assert fake_browser["MACO_CHROMIUM"] not in check.reason
        assert "apt-get install chromium chromium-driver" in check.reason


@pytest.mark.parametrize("ci", ["true", "TRUE", "1", "yes"])
def test_a_missing_browser_fails_under_ci(fake_browser, ci):
    check = check_browser({**fake_browser, "CI": ci})
    assert check.action == "fail"
    assert f"CI={ci} must run the browser test" in check.reason
    assert fake_browser["MACO_CHROMIUM"] in check.reason and fake_browser["MACO_CHROMEDRIVER"] in check.reason


def test_maco_skip_browser_skips_even_under_ci(fake_browser):
    assert check_browser({**fake_browser, "CI": "true", "MACO_SKIP_BROWSER": "1"}) == check_browser(
        {"MACO_SKIP_BROWSER": "1"}
    )
    assert check_browser({**fake_browser, "CI": "true", "MACO_SKIP_BROWSER": "1"}).action == "skip"


def test_a_browser_that_is_not_executable_counts_as_missing(fake_browser):
    for path in fake_browser.values():
        Path(path).write_text("not a program")
    assert check_browser(fake_browser).action == "skip"


# ------------------------------------------------------------------ .ci/ensure-browser itself


def _script(env: dict[str, str], path: Path) -> subprocess.CompletedProcess:
    """The script under bash with PATH = ``path`` only (so no real apt-get or sudo is found)."""
    return subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        env={**env, "PATH": str(path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_without_apt_get_the_script_warns_and_lets_the_test_skip(fake_browser, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = _script(fake_browser, empty)
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and "apt-get is not available" in done.stderr
    assert "will be SKIPPED" in done.stderr and "apt-get install chromium chromium-driver" in done.stderr


def test_without_apt_get_under_ci_the_script_fails(fake_browser, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = _script({**fake_browser, "CI": "true"}, empty)
    assert done.returncode == 1
    assert "ERROR" in done.stderr and "CI (CI=true) must run the browser test" in done.stderr


def test_the_script_installs_with_apt_get_when_it_may(fake_browser, tmp_path):
    """A stand-in apt-get (and sudo, for a non-root user) records its calls and "installs" the two
    executables; the script runs `apt-get update` then `install chromium chromium-driver`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    _executable(
        bin_dir / "apt-get",
        f'#!/bin/bash\necho "apt-get $*" >> {calls}\n'
        f'if [ "$1" = install ]; then for f in "$MACO_CHROMIUM" "$MACO_CHROMEDRIVER"; do\n'
        f'  echo "#!/bin/sh" > "$f"; /bin/chmod +x "$f"; done; fi\n',
    )
    _executable(bin_dir / "sudo", '#!/bin/bash\n[ "$1" = -n ] && shift\n"$@"\n')
    _executable(bin_dir / "env", '#!/bin/bash\nexport "$1"; shift\n"$@"\n')
    done = _script({**fake_browser, "CI": "true"}, bin_dir)
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == ["apt-get update -q", "apt-get install -y -q chromium chromium-driver"]
    assert check_browser({**fake_browser, "CI": "true"}).action == "run"
    again = _script({**fake_browser, "CI": "true"}, bin_dir)  # present now: nothing to do
    assert again.returncode == 0 and len(calls.read_text().splitlines()) == 2


def test_the_script_does_nothing_with_maco_skip_browser(fake_browser, tmp_path):
    done = _script({**fake_browser, "CI": "true", "MACO_SKIP_BROWSER": "1"}, tmp_path)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize(
    ("ci", "outcome", "words"),
    [
        ("", "1 skipped", "SKIPPED [1] tests/serve/test_browser.py"),
        ("true", "1 error", "ERROR tests/serve/test_browser.py"),
    ],
)
def test_pytest_shows_the_missing_browser_in_its_summary(fake_browser, ci, outcome, words):
    """The browser test's own run (pytest -ra, as `make test`): skipped with the reason in the
    summary, an error under CI; the skip comes before the server is started."""
    root = SCRIPT.parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "tests/serve/test_browser.py"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**_environ(), **fake_browser, "CI": ci},
    )
    assert outcome in done.stdout, done.stdout
    assert words in done.stdout and fake_browser["MACO_CHROMIUM"] in done.stdout
    assert done.returncode == (0 if ci == "" else 1)
    assert "did not come up" not in done.stdout


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MACO_SKIP_BROWSER", "PYTEST_ADDOPTS")}
