"""Geo tables from what operators have: a CSV of `cidr,country,region` rows, or a MaxMind DB
(.mmdb, the GeoLite2-Country / GeoIP2-Country layout) read with the `maxminddb` package.

Either way a bad input is refused whole, with every problem and where it is (CSV line numbers),
so a table is never applied half-imported.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import tempfile
from typing import Any

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from controlplane.geotable.table import GeoTable, Label, Row, TableError

CSV_COLUMNS = ("cidr", "country", "region")
PROBLEMS_SHOWN = 100  # a file with every line wrong need not list a million of them


def _capped(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if len(problems) <= PROBLEMS_SHOWN:
        return problems
    return [*problems[:PROBLEMS_SHOWN], ("file", f"and {len(problems) - PROBLEMS_SHOWN} more problems")]


def _line_number(problem: tuple[str, str]) -> int:
    where = problem[0]
    return int(where.removeprefix("line ")) if where.startswith("line ") else 0


def from_csv(text: str) -> GeoTable:
    """Rows `cidr,country,region` (either of country and region may be empty, not both). An
    optional header row naming those columns, blank lines and `#` comments are skipped."""
    problems: list[tuple[str, str]] = []
    rows: list[Row] = []
    for number, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not fields or fields[0].lstrip().startswith("#") or all(not f.strip() for f in fields):
            continue
        cells = [f.strip() for f in fields]
        if number == 1 and tuple(c.lower() for c in cells) == CSV_COLUMNS:
            continue
        where = f"line {number}"
        if len(cells) != len(CSV_COLUMNS):
            problems.append((where, f"expected 3 columns (cidr,country,region), got {len(cells)}"))
            continue
        cidr, country, region = cells
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            hint = ""
            if "has host bits set" in str(exc):
                hint = f" (the prefix is {ipaddress.ip_network(cidr, strict=False)})"
            problems.append((where, f"{cidr!r} is not a CIDR prefix with zero host bits{hint}"))
            continue
        rows.append(Row(network, Label(country, region), where))
    try:
        table = GeoTable.build(rows)
    except TableError as exc:
        problems.extend(exc.problems)
    if problems:
        raise TableError(_capped(sorted(problems, key=_line_number)))
    if table.prefixes == 0:
        raise TableError([("file", "no rows: expected cidr,country,region lines")])
    return table


def _country(record: Any) -> str | None:
    """GeoLite2-Country: the country, else the registered country (anycast, satellite
    providers), by ISO code."""
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        code = (record.get(key) or {}).get("iso_code")
        if isinstance(code, str) and code:
            return code
    return None


def from_mmdb(data: bytes) -> GeoTable:
    """Every network with a country; regions come later from the Geo object's `countries`."""
    # The C reader maps a file; a temporary file keeps a 10 MB upload out of a second copy.
    with tempfile.NamedTemporaryFile(suffix=".mmdb") as file:
        file.write(data)
        file.flush()
        try:
            reader = maxminddb.open_database(file.name)
        except (InvalidDatabaseError, ValueError, OSError) as exc:
            raise TableError([("file", f"not a MaxMind DB: {exc}")]) from None
        with reader:
            rows = []
            try:
                for network, record in reader:
                    country = _country(record)
                    if country is not None:
                        rows.append(Row(network, Label(country, ""), f"network {network}"))
            except InvalidDatabaseError as exc:
                raise TableError([("file", f"corrupt MaxMind DB: {exc}")]) from None
    if not rows:
        raise TableError([("file", "the database holds no network with a country")])
    return GeoTable.build(rows)


def imported(data: bytes, fmt: str) -> GeoTable:
    if fmt == "csv":
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise TableError([("file", f"not UTF-8 text: {exc}")]) from None
        return from_csv(text)
    assert fmt == "mmdb"
    return from_mmdb(data)

