/**
 * A streaming XML scanner: text goes in as chunks (any split, even inside a
 * tag), elements and their text come out as events, and the document's
 * well-formedness is checked on the way (tags closed in order, one root, no
 * text outside it, tokens finished). Attributes are checked for syntax and
 * dropped: the formats read here (Cell Counter XML) keep their data in
 * elements.
 *
 * Why our own: a whole-brain detection writes 100,000-1,000,000 markers
 * (100 MB of XML). Building the document first (fast-xml-parser) took 15 s
 * and 2.5 GB for a million; this holds one chunk and what the reader keeps.
 */

export interface XmlHandler {
  open(name: string): void;
  close(name: string): void;
  /** Character data directly inside the innermost open element (entities decoded, may come in pieces). */
  text(text: string): void;
}

/** Not well-formed: `line` and `column` (1-based) of where the scanner stopped. */
export class XmlSyntaxError extends Error {
  constructor(
    readonly reason: string,
    readonly line: number,
    readonly column: number,
  ) {
    super(`${reason} (line ${line}, column ${column})`);
    this.name = 'XmlSyntaxError';
  }
}

const NAME = /^[A-Za-z_:][\w.:-]*$/;
const ATTRIBUTES = /^(?:\s+[A-Za-z_:][\w.:-]*\s*=\s*(?:"[^"<]*"|'[^'<]*'))*\s*$/;
const ENTITY = /&(?:(lt|gt|amp|quot|apos)|#(\d+)|#x([0-9A-Fa-f]+));/g;
const NAMED: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function decodeEntities(text: string): string {
  if (!text.includes('&')) return text;
  const decoded = text.replace(ENTITY, (_, name: string | undefined, decimal: string | undefined, hex: string | undefined) =>
    name ? NAMED[name] : String.fromCodePoint(decimal ? Number(decimal) : parseInt(hex as string, 16)),
  );
  if (decoded.includes('&') && /&(?!(?:lt|gt|amp|quot|apos|#\d+|#x[0-9A-Fa-f]+);)/.test(text)) throw new Error('an "&" that starts no entity');
  return decoded;
}

export class XmlScanner {
  /** Text not yet scanned: the end of the last chunk when it stopped inside a token. */
  private pending = '';
  private readonly open: string[] = [];
  private rootSeen = false;
  private rootClosed = false;
  /** Line and column of the start of `pending`. */
  private line = 1;
  private column = 1;

  constructor(private readonly handler: XmlHandler) {}

  /** Scans a chunk; a token it cuts is finished by the next chunk. */
  write(chunk: string): void {
    let text = this.pending + chunk;
    if (!this.rootSeen && this.line === 1 && this.column === 1 && text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    const stop = this.scan(text, false);
    this.advance(text, stop);
    this.pending = text.slice(stop);
  }

  /** Ends the document: everything must be closed. */
  end(): void {
    const stop = this.scan(this.pending, true);
    this.advance(this.pending, stop);
    this.pending = this.pending.slice(stop);
    if (!this.rootSeen) this.fail('the document has no root element', this.pending, 0);
    if (this.open.length > 0) this.fail(`<${this.open[this.open.length - 1]}> is not closed before the end of the file`, this.pending, this.pending.length);
  }

  /** Scans `text` as far as complete tokens go; returns where it stopped. */
  private scan(text: string, atEnd: boolean): number {
    let at = 0;
    while (at < text.length) {
      const lt = text.indexOf('<', at);
      const textEnd = lt < 0 ? text.length : lt;
      if (textEnd > at) {
        // Character data may stop mid-entity at a chunk's end: keep it for the next chunk.
        if (lt < 0 && !atEnd) {
          const amp = text.lastIndexOf('&', textEnd);
          const cut = amp >= at && text.indexOf(';', amp) < 0 ? amp : textEnd;
          if (cut > at) this.characters(text, at, cut);
          return cut;
        }
        this.characters(text, at, textEnd);
      }
      if (lt < 0) return text.length;
      const end = this.tokenEnd(text, lt);
      if (end < 0) {
        if (atEnd) this.fail('a tag, comment or declaration is not finished before the end of the file', text, lt);
        return lt;
      }
      this.token(text, lt, end);
      at = end;
    }
    return at;
  }

  /** Where the token starting at `lt` ends (exclusive), or -1 if the text stops first. */
  private tokenEnd(text: string, lt: number): number {
    if (text.startsWith('<!--', lt)) return endAfter(text, '-->', lt + 4);
    if (text.startsWith('<![CDATA[', lt)) return endAfter(text, ']]>', lt + 9);
    if (text.startsWith('<?', lt)) return endAfter(text, '?>', lt + 2);
    if (lt + 9 > text.length && '<![CDATA['.startsWith(text.slice(lt))) return -1;
    // In a tag, a '>' inside a quoted attribute value does not end it.
    let quote = '';
    for (let i = lt + 1; i < text.length; i++) {
      const c = text[i];
      if (quote) {
        if (c === quote) quote = '';
      } else if (c === '"' || c === "'") quote = c;
      else if (c === '>') return i + 1;
      else if (c === '<') this.fail('"<" inside a tag', text, i);
    }
    return -1;
  }

  private token(text: string, start: number, end: number): void {
    if (text.startsWith('<!--', start) || text.startsWith('<?', start)) return;
    if (text.startsWith('<![CDATA[', start)) {
      if (this.open.length === 0) this.fail('character data outside the root element', text, start);
      this.handler.text(text.slice(start + 9, end - 3));
      return;
    }
    if (text.startsWith('<!', start)) {
      if (this.rootSeen) this.fail('a declaration inside the document', text, start);
      return;
    }
    if (text[start + 1] === '/') {
      const name = text.slice(start + 2, end - 1).trimEnd();
      const expected = this.open.pop();
      if (expected === undefined) this.fail(`</${name}> closes no open element`, text, start);
      if (name !== expected) this.fail(`</${name}> where </${expected}> was expected`, text, start);
      if (this.open.length === 0) this.rootClosed = true;
      this.handler.close(name);
      return;
    }
    const selfClosing = text[end - 2] === '/';
    const inner = text.slice(start + 1, selfClosing ? end - 2 : end - 1);
    const space = inner.search(/\s/);
    const name = space < 0 ? inner : inner.slice(0, space);
    if (!NAME.test(name)) this.fail(`"<${name}" does not start a valid element name`, text, start);
    if (space >= 0 && !ATTRIBUTES.test(inner.slice(space))) this.fail(`the attributes of <${name}> are malformed`, text, start);
    if (this.open.length === 0) {
      if (this.rootClosed) this.fail(`<${name}> after the root element has closed (a second root)`, text, start);
      this.rootSeen = true;
    }
    this.handler.open(name);
    if (selfClosing) {
      if (this.open.length === 0) this.rootClosed = true;
      this.handler.close(name);
    } else this.open.push(name);
  }

  private characters(text: string, from: number, to: number): void {
    if (this.open.length === 0) {
      for (let i = from; i < to; i++) {
        const c = text.charCodeAt(i);
        if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) this.fail(this.rootSeen ? 'text after the root element' : 'text before the root element (start tag expected)', text, i);
      }
      return;
    }
    try {
      this.handler.text(decodeEntities(text.slice(from, to)));
    } catch (error) {
      if (error instanceof XmlSyntaxError) throw error;
      this.fail((error as Error).message, text, from);
    }
  }

  /** Moves the line and column past text[0..to). */
  private advance(text: string, to: number): void {
    if (to === 0) return;
    const lastNewline = text.lastIndexOf('\n', to - 1);
    if (lastNewline < 0) {
      this.column += to;
      return;
    }
    for (let i = text.indexOf('\n'); i >= 0 && i < to; i = text.indexOf('\n', i + 1)) this.line++;
    this.column = to - lastNewline;
  }

  private fail(reason: string, text: string, at: number): never {
    const before = text.slice(0, at);
    const newlines = before.split('\n').length - 1;
    const column = newlines === 0 ? this.column + at : at - before.lastIndexOf('\n');
    throw new XmlSyntaxError(reason, this.line + newlines, column);
  }
}

function endAfter(text: string, terminator: string, from: number): number {
  const found = text.indexOf(terminator, from);
  return found < 0 ? -1 : found + terminator.length;
}
