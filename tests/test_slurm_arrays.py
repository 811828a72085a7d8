"""SLURM job-id arithmetic: --array lists, compressed task ids, collapsed dependencies."""

from __future__ import annotations

from repx.engine.slurm.arrays import (
    array_ranges,
    collapse_to_arrays,
    compress_task_ids,
    corresponding_array,
)

# ------------------------------------------------------------------------ array_ranges


def test_array_ranges_single_index() -> None:
    """One index is written as itself, without a range."""
    assert array_ranges([5]) == "5"


def test_array_ranges_runs_and_singletons() -> None:
    """Consecutive indices become ``a-b``; isolated ones stay single, comma separated."""
    assert array_ranges([0, 1, 2, 3, 4, 7, 9, 10]) == "0-4,7,9-10"


def test_array_ranges_two_consecutive_indices_form_a_range() -> None:
    """Two consecutive indices are a range, not two singletons."""
    assert array_ranges([3, 4]) == "3-4"


def test_array_ranges_unsorted_input_is_sorted() -> None:
    """The order of the input does not matter: the list is written in ascending order."""
    assert array_ranges([10, 7, 2, 9, 0, 1, 4, 3]) == "0-4,7,9-10"


def test_array_ranges_duplicates_are_ignored() -> None:
    """A repeated index is written once and does not break a run."""
    assert array_ranges([1, 1, 2, 2, 3, 8, 8]) == "1-3,8"


def test_array_ranges_all_isolated() -> None:
    """Indices with gaps between all of them are written one by one."""
    assert array_ranges([6, 0, 2, 4]) == "0,2,4,6"


def test_array_ranges_last_run_is_closed() -> None:
    """A run at the end of the list is written as a range too."""
    assert array_ranges([0, 5, 6, 7]) == "0,5-7"


def test_array_ranges_does_not_modify_its_input() -> None:
    """The caller's list is left as it was."""
    indices = [3, 1, 2, 1]
    array_ranges(indices)
    assert indices == [3, 1, 2, 1]


# ------------------------------------------------------------------------ compress_task_ids


def test_compress_plain_ids_are_kept_sorted() -> None:
    """Ids that are not array tasks are kept, deduplicated, in sorted order."""
    assert compress_task_ids(["300", "100", "200", "100"]) == ["100", "200", "300"]


def test_compress_tasks_of_one_array() -> None:
    """The tasks of one array are written as ``array_[ranges]``."""
    ids = ["123_3", "123_0", "123_1", "123_2", "123_7"]
    assert compress_task_ids(ids) == ["123_[0-3,7]"]


def test_compress_single_task_still_uses_brackets() -> None:
    """A lone task of an array is written in the bracket form as well."""
    assert compress_task_ids(["55_4"]) == ["55_[4]"]


def test_compress_plain_ids_come_before_arrays() -> None:
    """Plain ids first (sorted), then one entry per array (sorted by array id)."""
    ids = ["900_1", "42", "800_0", "900_0", "7", "800_2"]
    assert compress_task_ids(ids) == ["42", "7", "800_[0,2]", "900_[0-1]"]


def test_compress_empty_ids_are_dropped() -> None:
    """Empty strings are not job ids and are left out."""
    assert compress_task_ids(["", "12", ""]) == ["12"]
    assert compress_task_ids([]) == []


def test_compress_non_numeric_task_part_is_kept_as_plain() -> None:
    """An id whose part after ``_`` is not a task index is kept as written."""
    assert compress_task_ids(["123_[0-3]", "9_x"]) == ["123_[0-3]", "9_x"]


def test_compress_accepts_any_iterable() -> None:
    """A generator is accepted as well as a list."""
    assert compress_task_ids(f"5_{i}" for i in range(4)) == ["5_[0-3]"]


# ------------------------------------------------------------------------ collapse_to_arrays


def test_collapse_several_tasks_to_the_array() -> None:
    """Several tasks of one array collapse to the array's id."""
    assert collapse_to_arrays(["10_0", "10_3", "10_5"]) == ["10"]


def test_collapse_single_task_stays() -> None:
    """A single task of an array stays a task id."""
    assert collapse_to_arrays(["10_3"]) == ["10_3"]


def test_collapse_plain_ids_stay() -> None:
    """Plain job ids are kept as they are, sorted."""
    assert collapse_to_arrays(["30", "20"]) == ["20", "30"]


def test_collapse_mixed_arrays_sorted() -> None:
    """Each array is handled on its own; the result is sorted."""
    ids = ["20_1", "10_0", "10_1", "30", "20_1"]
    assert collapse_to_arrays(ids) == ["10", "20_1", "30"]


def test_collapse_repeated_task_is_one_task() -> None:
    """The same task listed twice is still one task, so it is not collapsed."""
    assert collapse_to_arrays(["10_2", "10_2"]) == ["10_2"]


def test_collapse_empty() -> None:
    """No ids, no dependencies."""
    assert collapse_to_arrays([]) == []


# ------------------------------------------------------------------------ corresponding_array


def test_corresponding_one_task_each() -> None:
    """Each member waiting for a distinct task of one array gives (array, {index: member})."""
    members = [("a", ["77_0"], []), ("b", ["77_1"], []), ("c", ["77_4"], [])]
    assert corresponding_array(members) == ("77", {0: "a", 1: "b", 4: "c"})


def test_corresponding_order_of_members_does_not_matter() -> None:
    """The mapping is by task index, whatever the order the members come in."""
    members = [("c", ["77_2"], []), ("a", ["77_0"], [])]
    assert corresponding_array(members) == ("77", {0: "a", 2: "c"})


def test_corresponding_fewer_than_two_members() -> None:
    """No members or a single one: no array correspondence."""
    assert corresponding_array([]) is None
    assert corresponding_array([("a", ["77_0"], [])]) is None


def test_corresponding_afterany_present() -> None:
    """A member with an ``afterany`` dependency rules it out."""
    members = [("a", ["77_0"], []), ("b", ["77_1"], ["88"])]
    assert corresponding_array(members) is None


def test_corresponding_two_arrays() -> None:
    """Members waiting on tasks of two different arrays: None."""
    members = [("a", ["77_0"], []), ("b", ["78_1"], [])]
    assert corresponding_array(members) is None


def test_corresponding_repeated_index() -> None:
    """Two members waiting for the same task: None."""
    members = [("a", ["77_0"], []), ("b", ["77_0"], [])]
    assert corresponding_array(members) is None


def test_corresponding_non_array_id() -> None:
    """A member waiting for a plain job (not an array task): None."""
    assert corresponding_array([("a", ["77_0"], []), ("b", ["78"], [])]) is None
    assert corresponding_array([("a", ["78"], []), ("b", ["77_0"], [])]) is None


def test_corresponding_non_numeric_index() -> None:
    """A task part that is not an index (e.g. a compressed list) rules it out."""
    assert corresponding_array([("a", ["77_0"], []), ("b", ["77_[1-2]"], [])]) is None


def test_corresponding_no_dependency() -> None:
    """A member waiting for nothing: None."""
    assert corresponding_array([("a", ["77_0"], []), ("b", [], [])]) is None


def test_corresponding_two_dependencies() -> None:
    """A member waiting for two tasks: None, even if they are tasks of the same array."""
    members = [("a", ["77_0"], []), ("b", ["77_1", "77_2"], [])]
    assert corresponding_array(members) is None
