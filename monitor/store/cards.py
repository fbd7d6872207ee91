"""Cards: the SD cards (or their copies) a folder's files were read from. A deployment spans many cards."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.store.base import Db, now_iso, when


@dataclass(frozen=True)
class Card:
    """One card: ``input_dir`` where it was last scanned; ``folder`` the link base a reviewer set ('' when none:
    links use ``input_dir``)."""

    id: int
    name: str
    input_dir: str
    folder: str = ""
    folder_set_at: str = ""
    first_scan: str = ""
    last_scan: str = ""

    @property
    def link_base(self) -> str:
        return self.folder or self.input_dir


class CardsMixin(Db):
    def new_card(self, name: str, input_dir: str) -> int:
        stamp = now_iso()
        cur = self.db.execute("INSERT INTO cards(name, input_dir, first_scan, last_scan) VALUES (?,?,?,?)",
                              (name, input_dir, stamp, stamp))
        return int(cur.lastrowid)

    def scanned(self, card: int, input_dir: str) -> None:
        """A card was scanned again (maybe mounted elsewhere)."""
        self.db.execute("UPDATE cards SET input_dir=?, last_scan=? WHERE id=?", (input_dir, now_iso(), card))

    def cards(self) -> list[Card]:
        cur = self.db.execute("SELECT id, name, input_dir, folder, folder_set_at, first_scan, last_scan FROM cards "
                              "ORDER BY id")
        return [Card(*r) for r in cur]

    def set_card_folder(self, card: int, folder: str, at: str = "") -> bool:
        """A reviewer's link base for ``card`` (decided ``at``), kept across rebuilds; an older edit never
        replaces a newer one. Returns whether it changed."""
        at = at or now_iso()
        row = self.db.execute("SELECT folder, folder_set_at FROM cards WHERE id=?", (card,)).fetchone()
        if row is None or row[0] == folder or when(at) < when(row[1]):
            return False
        self.db.execute("UPDATE cards SET folder=?, folder_set_at=? WHERE id=?", (folder, at, card))
        return True
