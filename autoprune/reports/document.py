"""A tiny document model: the report's content is built once, then rendered as Markdown and HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass
class Para:
    text: str                       # plain text; `code spans` are kept by both renderers


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Code:
    text: str
    language: str = "python"


@dataclass
class Figure:
    name: str                       # key into the images dict (file name stem)
    caption: str


Block = Union[Para, Table, Code, Figure]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    sections: list[Section] = field(default_factory=list)
