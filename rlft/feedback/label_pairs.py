"""From people's labels to preference pairs (winner, loser) within each group: pure functions, no I/O.

D3PO learns from people's choices with no reward model (arXiv 2311.13231, its human-feedback experiments:
reducing image distortions, improving safety, prompt-image alignment). One person's label orders a group:
  1. images flagged deformed or unsafe are dispreferred to images not flagged (the deformity and safety
     tasks: "bad" images lose to the others);
  2. among images with the same flag status, best > the others > worst.
Two images with the same standing give that person no preference between them.

Several people: a pair (a, b) goes to a if a strict majority of the people who labelled the group prefer
a; otherwise (a split vote, or most saw no difference) it is a tie and does not train. A strict majority of
everyone who looked, rather than of those who expressed a preference, keeps only pairs most people agree
on: a small labelled batch is better without contested pairs. (The official D3PO code instead averages
per-image scores over annotators and compares the means.)
"""

from collections import defaultdict
from itertools import combinations

from rlft.feedback.labels import Label


def standing(label: Label, image: str) -> tuple[int, int]:
    """How one person ranks an image in its group: compared as a tuple, larger is preferred."""
    flagged = image in label.deformed or image in label.unsafe
    choice = 2 if image == label.best else 0 if image == label.worst else 1
    return (0 if flagged else 1, choice)


def prefers(label: Label, a: str, b: str) -> int:
    """+1 if this person prefers a to b, -1 if b to a, 0 if neither."""
    sa, sb = standing(label, a), standing(label, b)
    return (sa > sb) - (sa < sb)


def group_pairs(labels: list[Label], images: list[str]) -> tuple[list[tuple[str, str]], int]:
    """One group's majority pairs (winner, loser) and its ties, from every person's label of it.

    Pairs come in the order of `images` (a before b when they appear so), each at most once.
    """
    pairs, ties = [], 0
    for a, b in combinations(images, 2):
        votes = [prefers(label, a, b) for label in labels]
        if 2 * votes.count(1) > len(labels):
            pairs.append((a, b))
        elif 2 * votes.count(-1) > len(labels):
            pairs.append((b, a))
        else:
            ties += 1
    return pairs, ties


def majority_pairs(labels: list[Label], groups: dict[int, list[str]]) -> tuple[list[tuple[str, str]], int]:
    """Every labelled group's pairs (winner, loser) and the total of ties, groups in ascending order.

    groups: {group index: its image ids}. Groups nobody labelled give no pairs and no ties.
    """
    by_group: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        by_group[label.group].append(label)
    pairs, ties = [], 0
    for group in sorted(by_group):
        found, tied = group_pairs(by_group[group], groups[group])
        pairs += found
        ties += tied
    return pairs, ties
