import asyncio

from rlft.distributed.mailbox import Mailbox


def test_each_box_gives_back_its_own_items_oldest_first():
    async def scenario():
        mailbox = Mailbox(["0", "replies"])
        await mailbox.put("0", "first")
        await mailbox.put("replies", "a reply")
        await mailbox.put("0", "second")
        return [await mailbox.get("0", 1.0), await mailbox.get("0", 1.0), await mailbox.get("replies", 1.0)]

    assert asyncio.run(scenario()) == [["first"], ["second"], ["a reply"]]


def test_a_get_on_an_empty_box_gives_nothing_after_its_timeout():
    async def scenario():
        return await Mailbox(["0"]).get("0", 0.05)

    assert asyncio.run(scenario()) == []


def test_a_waiting_get_takes_the_item_put_while_it_waits():
    async def scenario():
        mailbox = Mailbox(["0", "replies"])
        waiting = asyncio.create_task(mailbox.get("0", None))
        await asyncio.sleep(0.05)
        await mailbox.put("replies", "not for box 0")
        await mailbox.put("0", "join")
        return await waiting, await mailbox.get("replies", 0.05)

    assert asyncio.run(scenario()) == (["join"], ["not for box 0"])
