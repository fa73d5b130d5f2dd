from __future__ import annotations

import copy
import pickle

from terrace.errors import Diagnostic, Severity, SpecError


def test_spec_errors_sort_their_problems_and_survive_pickling() -> None:
    later = Diagnostic(file="ci.yml", line=9, column=1, path="run", message="b")
    first = Diagnostic(file="ci.yml", line=2, column=5, path="run.web", message="a")
    hint = Diagnostic(
        file="ci.yml", line=1, column=1, path="", message="w", severity=Severity.WARNING
    )
    error = SpecError([later, first], warnings=[hint])
    assert error.problems == (first, later)
    assert (error.line, error.column, error.path, error.message) == (2, 5, "run.web", "a")
    assert str(error) == "ci.yml:2:5: error: a (run.web)\nci.yml:9:1: error: b (run)"
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert clone.problems == error.problems
        assert clone.warnings == (hint,)
