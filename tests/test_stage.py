"""samkit.pipeline.stage: the notebook the book shows (parameter cells hidden, the values used
kept) and what is stripped from it so that a rerun on the same numbers rewrites nothing."""
import re

import nbformat

from samkit.pipeline.stage import _strip_run_noise


def test_book_copy_hides_both_parameter_cells_and_keeps_the_injected_values(tmp_path):
    import nbformat
    from samkit.pipeline.stage import _hide_default_parameters
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('profile = "tiny"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print(profile)")])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    _hide_default_parameters(path)
    cells = nbformat.read(path, as_version=4).cells
    assert [c.metadata.get("tags", []) for c in cells] == [
        ["parameters", "remove-cell"], ["injected-parameters", "remove-cell"], []]
    assert cells[1].source == 'profile = "cpu"'   # the values used stay in the notebook


def _styled_notebook(path, uid, address):
    """An executed notebook as papermill leaves it: timings, a temporary output path, a random
    id on the injected cell, a Styler table with a random id and a repr with an address."""
    html = (f'<style type="text/css">\n#T_{uid}_row0_col0 {{ color: red; }}\n</style>\n'
            f'<table id="T_{uid}">\n  <td id="T_{uid}_row0_col0" class="data row0 col0" >1'
            '</td>\n</table>\n')
    out = nbformat.v4.new_output("execute_result", execution_count=2, data={
        "text/html": html, "text/plain": f"<pandas.io.formats.style.Styler at {address}>"})
    timing = {"start_time": f"2026-01-01T00:00:0{uid[-1]}", "end_time": f"{address}",
              "duration": int(uid[-1], 16) / 10, "status": "completed", "exception": False}
    injected = nbformat.v4.new_code_cell('profile = "cpu"', metadata={
        "tags": ["injected-parameters"], "papermill": dict(timing)})
    injected.id = f"rand{uid}"
    shown = nbformat.v4.new_code_cell("t", execution_count=2, outputs=[out], metadata={
        "papermill": dict(timing), "execution": {"iopub.status.busy": timing["start_time"]}})
    shown.id = "cell1"
    nb = nbformat.v4.new_notebook(cells=[injected, shown], metadata={"papermill": {
        **timing, "output_path": f"book/x.ipynb.tmp.{uid}.ipynb", "parameters": {}}})
    nbformat.write(nb, path)


def test_run_noise_is_stripped_and_the_table_still_styled(tmp_path):
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    _styled_notebook(a, "53616", "0x7f9c3d157490")
    _styled_notebook(b, "9be01", "0x7f00aa001122")
    for path in (a, b):
        _strip_run_noise(path, "book/x.ipynb")
    assert a.read_bytes() == b.read_bytes()
    nb = nbformat.read(a, as_version=4)
    assert nb.metadata.papermill == {"status": "completed", "exception": False,
                                     "output_path": "book/x.ipynb", "parameters": {}}
    assert nb.cells[0].id == "injected-parameters"
    assert "execution" not in nb.cells[1].metadata
    html = nb.cells[1].outputs[0].data["text/html"]
    uid = re.search(r'<table id="T_(\w+)"', html).group(1)
    assert f"#T_{uid}_row0_col0 {{" in html and f'<td id="T_{uid}_row0_col0"' in html
    assert nb.cells[1].outputs[0].data["text/plain"] == "<pandas.io.formats.style.Styler>"
