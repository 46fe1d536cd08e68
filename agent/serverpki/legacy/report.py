"""The import's report: rows per table, and every row not carried over with why and the fix."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    read: dict[str, int] = field(default_factory=dict)
    imported: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, table: str) -> None:
        self.imported[table] = self.imported.get(table, 0) + 1

    def skip(self, what: str, why: str, fix: str) -> None:
        self.skipped.append(f"{what}: {why}; fix: {fix}")

    def text(self) -> str:
        lines = ["table                  read  imported"]
        for table, n in self.read.items():
            lines.append(f"{table:<21} {n:>5} {self.imported.get(table, 0):>9}")
        lines.append(f"not carried over: {len(self.skipped)}")
        lines += [f"  {line}" for line in self.skipped]
        lines += self.notes
        return "\n".join(lines)
