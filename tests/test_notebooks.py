"""Every notebook in notebooks/ is stored without outputs and runs from top to bottom without errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from embedseg.cli import main

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"


@pytest.fixture
def finished_run(tiny_config_file, tmp_path) -> Path:
    """A smoke run as a user leaves it: trained (on train without its tune split), then tuned."""
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_config_file), "--out", str(run_dir), "--set", "data.tune={fraction: 0.25}",
                 "--set", "train.steps=20", "--no-eval"]) == 0
    assert main(["tune", str(run_dir), "--groupers", "meanshift,components", "--trials", "2"]) == 0
    return run_dir


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, finished_run, monkeypatch):
    # "python3" resolves to this interpreter's kernel (jupyter_client runs it with sys.executable),
    # so the notebook imports the embedseg under test. It runs in a scratch folder, on the finished
    # run that EMBEDSEG_RUN names.
    monkeypatch.setenv("EMBEDSEG_RUN", str(finished_run))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors
    assert any(output.output_type in ("display_data", "execute_result") for cell in notebook.cells
               if cell.cell_type == "code" for output in cell.outputs), f"{path.name} displayed nothing"
