"""A text file's bytes as checked UTF-8: what pyarrow's CSV and JSON readers read (see ``TextStream``)."""

from __future__ import annotations

import codecs
import io
import os
import zlib

from searchtune.errors import SearchtuneError


class TextStream(io.RawIOBase):
    """A text file's bytes as UTF-8, checked line by line; what pyarrow's CSV and JSON readers read.

    A byte-order mark picks the encoding (UTF-8, UTF-16, UTF-32) and is dropped. Otherwise
    the bytes must be UTF-8: with ``encoding="auto"`` the first line that is not stops the
    run, naming the file, the byte offset and the line; with a declared ASCII-compatible
    encoding (cp1252, latin-1, ...) such lines are decoded with it and counted in
    ``fallback_lines`` (so a file mixing UTF-8 and Latin-1 lines reads right); a declared
    UTF-16/32 encoding decodes the whole file. Characters are never replaced. A corrupt or
    truncated archive under it (``raw`` a ``gzip.GzipFile``) stops the run naming the file and
    the byte where reading failed.
    """

    def __init__(self, raw, path: str, encoding: str = "auto", block_bytes: int = 2 << 20):
        super().__init__()
        self.raw, self.path, self.fallback_lines, self.block_bytes = raw, path, 0, block_bytes
        self.offset = self.lines = 0  # bytes and newlines of the input consumed so far
        self.pending, self.carry = b"", b""
        self.raw_bytes = 0  # bytes read from ``raw`` (decompressed, for an archive)
        head = self._read_raw(4)
        boms = [(codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
                (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")]
        bom, name = next(((b, n) for b, n in boms if head.startswith(b)), (b"", ""))
        self.carry, self.offset = head[len(bom):], len(bom)
        self.transcoder = None
        self.fallback = None if encoding == "auto" else encoding
        if name and name != "utf-8":
            self.transcoder, self.used = codecs.getincrementaldecoder(name)(), f"{name} (BOM)"
        elif name:
            self.used = "utf-8 (BOM)"
        elif self.fallback and not _ascii_compatible(self.fallback):
            self.transcoder, self.used = codecs.getincrementaldecoder(self.fallback)(), self.fallback
        else:
            self.used = "utf-8" if not self.fallback else f"utf-8, other lines {self.fallback}"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            block = self._next_block()
            if block is None:
                return 0
            self.pending = block
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size

    def _next_block(self) -> bytes | None:
        data = self._read_raw(self.block_bytes)
        if self.transcoder is not None:
            text = self.transcoder.decode(self.carry + data, final=not data)
            self.carry = b""
            return text.encode("utf-8") if (text or data) else None
        block = self.carry + data
        if not block:
            return None
        cut = block.rfind(b"\n") + 1 if data else len(block)
        if cut == 0:  # no newline yet: read on (a line longer than a block)
            self.carry = block
            return b""
        block, self.carry = block[:cut], block[cut:]
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            block = self._decode_lines(block)
        self.offset += cut
        self.lines += block.count(b"\n")
        return block

    def _read_raw(self, size: int) -> bytes:
        """The next bytes of the file. A corrupt or truncated archive, or a failing disk, is one line naming
        the file and where it failed (gzip's own EOFError and zlib.error name neither)."""
        try:
            data = self.raw.read(size)
        except (EOFError, zlib.error, OSError) as error:
            raise SearchtuneError(f"{self.path}: {_read_failure(error, self.raw, self.raw_bytes)}") from None
        self.raw_bytes += len(data)
        return data

    def _decode_lines(self, block: bytes) -> bytes:
        out, offset = [], self.offset
        for number, line in enumerate(block.split(b"\n")):
            try:
                line.decode("utf-8")
                out.append(line)
            except UnicodeDecodeError as error:
                where = f"{self.path}: not valid UTF-8 at byte {offset + error.start} (line {self.lines + number + 1})"
                if self.fallback is None:
                    shown = line[max(0, error.start - 30) : error.start + 30]
                    raise SearchtuneError(
                        f"{where}: {shown!r}; name the file's encoding with --encoding (encoding=), e.g. cp1252 for "
                        f"Windows/Latin-1 exports, in which this reads {shown.decode('cp1252', 'replace')!r}") from None
                try:
                    out.append(line.decode(self.fallback).encode("utf-8"))
                except UnicodeDecodeError:
                    raise SearchtuneError(f"{where}, nor valid {self.fallback}: {line[:80]!r}") from None
                self.fallback_lines += 1
            offset += len(line) + 1
        return b"\n".join(out)


def _read_failure(error: Exception, raw, read: int) -> str:
    """What failed and where: the byte of the file (of the compressed file, for an archive) and how much was read."""
    under = getattr(raw, "fileobj", None)  # gzip.GzipFile: the file below the decompressor
    try:
        handle = under if under is not None else raw
        where, size = handle.tell(), os.fstat(handle.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        where = size = None
    done = f"after {read:,} bytes {'decompressed' if under is not None else 'read'}"
    if isinstance(error, EOFError):
        return f"truncated compressed data: the file ends at byte {size:,} before its gzip stream does ({done}); " \
               "was it cut short, or is it still being written?"
    if "Not a gzipped file" in str(error):
        return f"not gzip data, though its name ends in .gz: {error}"
    near = f"near byte {where:,} of {size:,}, {done}" if size is not None else done
    if isinstance(error, zlib.error) or type(error).__name__ == "BadGzipFile":
        return f"corrupt compressed data {near}: {error}"
    return f"read failed {near}: {getattr(error, 'strerror', None) or error}"


def _ascii_compatible(encoding: str) -> bool:
    sample = "\n,\t{}\"abc09"
    try:
        return sample.encode(encoding) == sample.encode("ascii")
    except (LookupError, UnicodeError):
        return False

