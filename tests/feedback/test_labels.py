import sqlite3
import threading

import pytest

from rlft.feedback.label_pairs import group_pairs, majority_pairs
from rlft.feedback.labels import DB_FILE, Label, LabelError, check_label, connect, read_labels, save_label

ABCD = ["a", "b", "c", "d"]


def test_best_beats_the_others_and_the_others_beat_worst():
    pairs, ties = group_pairs([Label("ann", 0, best="a", worst="d")], ABCD)
    # a: best, d: worst, b and c in between and equal to each other.
    assert pairs == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")]
    assert ties == 1  # (b, c)


def test_flagged_images_lose_to_unflagged_ones_even_when_chosen_best():
    label = Label("ann", 0, best="a", worst="c", deformed=("a",))
    # standings: a (flagged, best) < b (ok, middle) and c (ok, worst); among the unflagged, b > c.
    assert group_pairs([label], ["a", "b", "c"]) == ([("b", "a"), ("c", "a"), ("b", "c")], 0)


def test_flags_alone_order_bad_below_good_as_in_the_deformity_and_safety_tasks():
    label = Label("ann", 0, best=None, worst=None, deformed=("b",), unsafe=("d",))
    pairs, ties = group_pairs([label], ABCD)
    assert pairs == [("a", "b"), ("a", "d"), ("c", "b"), ("c", "d")]
    assert ties == 2  # (a, c) both fine, (b, d) both bad


def test_several_annotators_take_a_strict_majority_per_pair():
    two_to_one = [
        Label("ann", 0, best="a", worst="b"),
        Label("bob", 0, best="a", worst="b"),
        Label("cat", 0, best="b", worst="a"),
    ]
    assert group_pairs(two_to_one, ["a", "b"]) == ([("a", "b")], 0)
    # ann: a > b > c; bob: c > b > a; cat: no preference. Every pair gets one vote each way: all tie.
    split = [
        Label("ann", 0, best="a", worst="c"),
        Label("bob", 0, best="c", worst="a"),
        Label("cat", 0, best=None, worst=None),
    ]
    assert group_pairs(split, ["a", "b", "c"]) == ([], 3)
    # One preference and one "no preference" out of two people is no majority.
    half = [Label("ann", 0, best="a", worst="b"), Label("bob", 0, best=None, worst=None)]
    assert group_pairs(half, ["a", "b"]) == ([], 1)


def test_majority_pairs_cover_labelled_groups_in_order_and_skip_the_others():
    groups = {0: ["g0-0", "g0-1"], 1: ["g1-0", "g1-1"], 2: ["g2-0", "g2-1"]}
    labels = [Label("ann", 2, best="g2-1", worst="g2-0"), Label("ann", 0, best="g0-0", worst="g0-1")]
    assert majority_pairs(labels, groups) == ([("g0-0", "g0-1"), ("g2-1", "g2-0")], 0)


@pytest.mark.parametrize(
    "label, field",
    [
        (Label("ann", 0, best="a", worst="a"), "worst"),
        (Label("ann", 0, best="a", worst="z"), "worst"),
        (Label("ann", 0, best="a", worst=None), "worst"),
        (Label("ann", 0, best="a", worst="b", deformed=("z",)), "deformed"),
        (Label("  ", 0, best="a", worst="b"), "annotator"),
    ],
)
def test_labels_that_mean_nothing_for_the_group_are_refused_naming_the_field(label, field):
    with pytest.raises(LabelError) as error:
        check_label(label, ["a", "b", "c"])
    assert error.value.field == field


def test_the_store_is_wal_versioned_and_one_row_per_annotator_and_group(tmp_path):
    conn = connect(tmp_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    save_label(conn, Label("ann", 0, best="a", worst="b", deformed=("c",)), "sha")
    save_label(conn, Label("ann", 0, best="b", worst="a"), "sha")  # a correction replaces the first answer
    save_label(conn, Label("bob", 0, best="a", worst="b"), "sha")
    conn.close()
    again = connect(tmp_path)  # what a restarted server sees
    stored = read_labels(again)
    assert [(label.annotator, label.best, label.deformed) for label, _ in stored] == [
        ("ann", "b", ()),
        ("bob", "a", ()),
    ]
    assert [label.annotator for label, _ in read_labels(again, "bob")] == ["bob"]


def test_a_store_from_another_schema_version_is_refused(tmp_path):
    connect(tmp_path).close()
    raw = sqlite3.connect(tmp_path / DB_FILE)
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(ValueError, match="schema version 99"):
        connect(tmp_path)


def test_concurrent_writers_on_their_own_connections_lose_nothing(tmp_path):
    connect(tmp_path).close()

    def annotate(who: str) -> None:
        conn = connect(tmp_path)
        for group in range(25):
            save_label(conn, Label(who, group, best="a", worst="b"), "sha")
        conn.close()

    threads = [threading.Thread(target=annotate, args=(f"person{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(read_labels(connect(tmp_path))) == 8 * 25
