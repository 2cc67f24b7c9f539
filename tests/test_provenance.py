"""samkit.provenance: the commit a result records."""
import subprocess

from samkit import provenance


def test_commit_is_dirty_only_for_code_changes(tmp_path, monkeypatch):
    """The pipeline rewrites tracked results while it runs; that must not mark them "-dirty"."""
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True)

    monkeypatch.chdir(tmp_path)
    (tmp_path / "samkit").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "samkit" / "sam.py").write_text("a = 1\n")
    (tmp_path / "results" / "runs.csv").write_text("x\n1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    commit = provenance.git_commit.__wrapped__
    (tmp_path / "results" / "runs.csv").write_text("x\n2\n")
    monkeypatch.chdir(tmp_path / "results")  # also from a subdirectory
    assert commit() == head
    (tmp_path / "samkit" / "sam.py").write_text("a = 2\n")
    assert commit() == head + "-dirty"
