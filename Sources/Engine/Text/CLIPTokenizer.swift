// CLIPTokenizer: CLIP's byte-level BPE tokenizer, matching transformers' slow `CLIPTokenizer`
// (models/clip/tokenization_clip.py, transformers 4.x) on its path without ftfy.
import Foundation

/// CLIP's byte-level BPE tokenizer over a transformers-format `vocab.json` + `merges.txt`.
///
/// Reproduces transformers' slow `CLIPTokenizer` when ftfy is not installed (the reference ids in
/// `Tests/EngineTests/Fixtures/tokenizer/corpus.json` come from transformers 4.57.3):
/// 1. `<|startoftext|>` / `<|endoftext|>` written literally in the text are split out first
///    (transformers' added-token trie) and map to their ids;
/// 2. `BasicTokenizer(strip_accents=False, do_split_on_punc=False)`: NUL, U+FFFD and control/format/
///    private/unassigned characters are dropped, whitespace becomes " ", CJK ideographs get spaces
///    around them, the text is NFC-normalised, split on whitespace and each word lower-cased with
///    Python's `str.lower()` (full mappings, final sigma);
/// 3. CLIP's pattern `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
///    (compiled with IGNORECASE by the `regex` module), hand-written here over Unicode scalars;
/// 4. each piece's UTF-8 bytes mapped through `bytes_to_unicode`, `</w>` on the last one, and BPE
///    merges applied lowest rank first, every occurrence of that pair left to right.
///
/// Characters assigned after Unicode 14.0 count as unassigned (dropped), as in the Python 3.11
/// `unicodedata` the fixtures were made with. Thread-safe: the BPE cache sits behind a lock.
///
/// transformers 5 has no slow tokenizer: its `CLIPTokenizer` is the Rust one (formerly `CLIPTokenizerFast`).
/// It gives the same ids on ordinary text (the AutoDIR prompts included) but not on CJK ideographs,
/// control and format characters, final sigma, U+0345 and a few more (`fast_ids` in the corpus).
public final class CLIPTokenizer: @unchecked Sendable {
    /// `<|startoftext|>` (49406 in CLIP's vocabulary).
    public let bosId: Int
    /// `<|endoftext|>` (49407).
    public let eosId: Int
    /// The padding id: `<|endoftext|>`, as transformers' CLIP tokenizer pads.
    public let padId: Int
    /// The id given to a BPE symbol missing from the vocabulary: `<|endoftext|>`.
    private let unkId: Int

    /// Vocabulary id of each BPE symbol (base byte characters, their `</w>` forms, merge results).
    private let symbolVocabId: [Int]
    /// Symbols of byte `b` inside a word and at its end (`</w>` appended).
    private let byteSymbol: [Int32]
    private let byteEndSymbol: [Int32]
    /// `(left << 32) | right` → (rank, merged symbol).
    private let merges: [UInt64: Merge]

    private struct Merge {
        var rank: Int32
        var result: Int32
    }

    private let lock = NSLock()
    private var cache: [[UInt8]: [Int]] = [:]
    private static let cacheLimit = 65_536
    private static let cacheMaxPieceBytes = 1024

    /// transformers keeps the first `49152 - 256 - 2` merges after the header line.
    private static let maxMerges = 49152 - 256 - 2
    /// Unicode version of the reference's `unicodedata` (Python 3.11): newer characters are unassigned there.
    private static let unicodeVersion = (major: 14, minor: 0)

    private static let startOfText = "<|startoftext|>"
    private static let endOfText = "<|endoftext|>"

    /// Loads `vocab.json` (token → id) and `merges.txt` ("#version" header, then one `left right` pair a line).
    public init(vocabPath: String, mergesPath: String) throws {
        let vocab = try Self.loadVocab(vocabPath)
        if let bad = vocab.first(where: { $0.value < 0 || $0.value > Int(Int32.max) }) {
            throw EngineError.format("\(vocabPath): id \(bad.value) of \"\(bad.key)\" is out of range")
        }
        guard let bos = vocab[Self.startOfText], let eos = vocab[Self.endOfText] else {
            throw EngineError.format("\(vocabPath): vocabulary lacks \(Self.startOfText) or \(Self.endOfText)")
        }
        bosId = bos
        eosId = eos
        padId = eos
        unkId = eos

        let pairs = try Self.loadMerges(mergesPath)

        var symbols: [String] = []
        var symbolIndex: [String: Int32] = [:]
        func intern(_ s: String) -> Int32 {
            if let i = symbolIndex[s] { return i }
            let i = Int32(symbols.count)
            symbols.append(s)
            symbolIndex[s] = i
            return i
        }
        let table = Self.bytesToUnicode()
        byteSymbol = table.map { intern(String(Character($0))) }
        byteEndSymbol = table.map { intern(String(Character($0)) + "</w>") }
        var merges: [UInt64: Merge] = [:]
        merges.reserveCapacity(pairs.count)
        for (rank, pair) in pairs.enumerated() {
            let left = intern(pair.0), right = intern(pair.1)
            let result = intern(pair.0 + pair.1)
            // A repeated pair keeps its last rank, as Python's dict(zip(merges, range(...))) does.
            merges[UInt64(UInt32(left)) << 32 | UInt64(UInt32(right))] = Merge(rank: Int32(rank), result: result)
        }
        self.merges = merges
        symbolVocabId = symbols.map { vocab[$0] ?? eos }
    }

    /// Loads `vocab.json` and `merges.txt` from one directory.
    public convenience init(directory: String) throws {
        let dir = URL(fileURLWithPath: directory)
        try self.init(vocabPath: dir.appendingPathComponent("vocab.json").path,
                      mergesPath: dir.appendingPathComponent("merges.txt").path)
    }

    /// Token ids of `text`, without `<|startoftext|>` / `<|endoftext|>` around them and untruncated.
    public func encode(_ text: String) -> [Int] {
        var ids: [Int] = []
        let scalars = Array(text.unicodeScalars)
        // transformers splits literal special tokens out of the raw text before any clean-up.
        var start = 0, i = 0
        while i < scalars.count {
            if scalars[i] == "<", let (length, id) = matchSpecial(scalars, at: i) {
                encodeSegment(scalars[start..<i], into: &ids)
                ids.append(id)
                i += length
                start = i
            } else {
                i += 1
            }
        }
        encodeSegment(scalars[start..<scalars.count], into: &ids)
        return ids
    }

    /// `tok(text, padding="max_length", max_length=maxLength, truncation=True)`: `<|startoftext|>`,
    /// the text's ids cut to `maxLength - 2`, `<|endoftext|>`, then `padId` up to `maxLength`.
    /// The attention mask is 1 on the real tokens (both special ones included), 0 on the padding.
    public func callAsFunction(_ text: String, maxLength: Int = 77) -> (ids: [Int32], attentionMask: [Int32]) {
        guard maxLength > 0 else { return ([], []) }
        let body = encode(text).prefix(max(0, maxLength - 2))
        var ids = [Int32(bosId)] + body.map { Int32($0) } + [Int32(eosId)]
        if ids.count > maxLength { ids = Array(ids.prefix(maxLength)) }
        var mask = [Int32](repeating: 1, count: ids.count)
        let padding = maxLength - ids.count
        ids += [Int32](repeating: Int32(padId), count: padding)
        mask += [Int32](repeating: 0, count: padding)
        return (ids, mask)
    }

    // MARK: - Pre-tokenization

    /// A literal `<|startoftext|>` / `<|endoftext|>` at `i`: its length in scalars and id.
    private func matchSpecial(_ s: [Unicode.Scalar], at i: Int) -> (Int, Int)? {
        for (token, id) in [(Self.startOfText, bosId), (Self.endOfText, eosId)] {
            let t = Array(token.unicodeScalars)
            if i + t.count <= s.count && s[i..<(i + t.count)].elementsEqual(t) { return (t.count, id) }
        }
        return nil
    }

    /// BasicTokenizer clean-up, lower-casing, CLIP's pattern, then BPE, for text without literal special tokens.
    private func encodeSegment(_ segment: ArraySlice<Unicode.Scalar>, into ids: inout [Int]) {
        if segment.isEmpty { return }
        // _clean_text and _tokenize_chinese_chars.
        var cleaned: [Unicode.Scalar] = []
        cleaned.reserveCapacity(segment.count)
        var needsNFC = false
        for s in segment {
            if Self.isDropped(s) { continue }
            if Self.isBasicWhitespace(s) {
                cleaned.append(" ")
            } else if Self.isCJK(s) {
                cleaned.append(" ")
                cleaned.append(s)
                cleaned.append(" ")
                needsNFC = true
            } else {
                cleaned.append(s)
                // Below U+0300 nothing composes, so such text is NFC already.
                if s.value >= 0x300 { needsNFC = true }
            }
        }
        if needsNFC { cleaned = Self.nfc(cleaned) }
        // whitespace_tokenize, then str.lower() on each word; CLIP's pattern never matches across a space.
        var start = 0
        for i in 0...cleaned.count {
            if i == cleaned.count || Self.isPythonWhitespace(cleaned[i]) {
                if i > start { encodeWord(Self.pythonLowercased(cleaned[start..<i]), into: &ids) }
                start = i + 1
            }
        }
    }

    /// Unicode NFC, as Python's `unicodedata.normalize("NFC", ...)`.
    ///
    /// Works around two bugs of Foundation's `precomposedStringWithCanonicalMapping` (Swift 6.3, Linux):
    /// - it does not reorder marks after decomposing a non-starter such as U+0F73 or U+0344
    ///   ("\u{301}\u{F73}" gives "\u{301}\u{F71}\u{F72}", not "\u{F71}\u{F72}\u{301}"), so the
    ///   canonical decomposition (scalar by scalar) and ordering are done here;
    /// - it composes an astral starter with a following mark as if the starter were its low 16 bits
    ///   (U+3006B U+0301 gives U+1E31 "ḱ"), so astral starters that take part in no composition are kept out of it.
    private static func nfc(_ scalars: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var decomposed: [Unicode.Scalar] = []
        decomposed.reserveCapacity(scalars.count + 8)
        var memo: [Unicode.Scalar: [Unicode.Scalar]] = [:]
        for s in scalars {
            // Nothing below U+00C0 has a canonical decomposition.
            if s.value < 0xC0 { decomposed.append(s); continue }
            if let d = memo[s] { decomposed += d; continue }
            let d = Array(String(Character(s)).decomposedStringWithCanonicalMapping.unicodeScalars)
            memo[s] = d
            decomposed += d
        }
        // Canonical ordering: stable sort of each run of non-starters by combining class.
        var i = 0
        while i < decomposed.count {
            guard decomposed[i].properties.canonicalCombiningClass.rawValue != 0 else { i += 1; continue }
            var j = i + 1
            while j < decomposed.count && decomposed[j].properties.canonicalCombiningClass.rawValue != 0 { j += 1 }
            if j - i > 1 {
                let run = decomposed[i..<j].enumerated().sorted {
                    let a = $0.element.properties.canonicalCombiningClass.rawValue
                    let b = $1.element.properties.canonicalCombiningClass.rawValue
                    return a != b ? a < b : $0.offset < $1.offset
                }
                decomposed.replaceSubrange(i..<j, with: run.map { $0.element })
            }
            i = j
        }
        // Compose; an astral starter in no composition is copied as is with the marks that follow it.
        var composed: [Unicode.Scalar] = []
        composed.reserveCapacity(decomposed.count)
        var pending = String.UnicodeScalarView()
        i = 0
        while i < decomposed.count {
            let s = decomposed[i]
            if s.value >= 0x10000 && !astralCompositionParticipants.contains(s.value)
                && s.properties.canonicalCombiningClass.rawValue == 0 {
                composed += String(pending).precomposedStringWithCanonicalMapping.unicodeScalars
                pending = String.UnicodeScalarView()
                composed.append(s)
                i += 1
                while i < decomposed.count && decomposed[i].properties.canonicalCombiningClass.rawValue != 0 {
                    composed.append(decomposed[i])
                    i += 1
                }
            } else {
                pending.append(s)
                i += 1
            }
        }
        composed += String(pending).precomposedStringWithCanonicalMapping.unicodeScalars
        return composed
    }

    /// Astral scalars that are half of a primary composite (Unicode 14: Kaithi, Chakma, Grantha, Tirhuta,
    /// Siddham, Dives Akuru); Foundation composes these correctly.
    private static let astralCompositionParticipants: Set<UInt32> = [
        0x11099, 0x1109B, 0x110A5, 0x110BA, 0x11127, 0x11131, 0x11132, 0x1133E, 0x11347, 0x11357,
        0x114B0, 0x114B9, 0x114BA, 0x114BD, 0x115AF, 0x115B8, 0x115B9, 0x11930, 0x11935,
    ]

    private enum ScalarClass { case letter, number, space, other }

    /// The class of a scalar for CLIP's pattern as the `regex` module applies it with IGNORECASE.
    private static func regexClass(_ s: Unicode.Scalar) -> ScalarClass {
        if s.isASCII {
            switch s.value {
            case 0x61...0x7A, 0x41...0x5A: return .letter
            case 0x30...0x39: return .number
            case 0x09...0x0D, 0x20: return .space
            default: return .other
            }
        }
        // U+0345 (Mn) case-folds to a letter, so with IGNORECASE it falls outside `[^\s\p{L}\p{N}]`
        // yet inside no other branch: the scan skips it like a space.
        if s.value == 0x345 || s.properties.isWhitespace { return .space }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    /// Whether `s` equals the ASCII letter or punctuation `c` under simple case folding ("ſ" matches "s").
    private static func caselessEqual(_ s: Unicode.Scalar, _ c: Unicode.Scalar) -> Bool {
        if s == c { return true }
        switch c {
        case "a"..."z":
            if s.value == c.value - 0x20 { return true }
            if c == "s" && s.value == 0x17F { return true }   // LATIN SMALL LETTER LONG S
            if c == "k" && s.value == 0x212A { return true }  // KELVIN SIGN
            return false
        default:
            return false
        }
    }

    private static func matches(_ w: [Unicode.Scalar], at i: Int, _ literal: String) -> Int? {
        var j = i
        for c in literal.unicodeScalars {
            guard j < w.count, caselessEqual(w[j], c) else { return nil }
            j += 1
        }
        return j - i
    }

    private static let patternLiterals = [startOfText, endOfText, "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]

    /// Splits one lower-cased word with CLIP's pattern (leftmost-first alternation) and BPE-encodes the pieces.
    private func encodeWord(_ w: [Unicode.Scalar], into ids: inout [Int]) {
        var i = 0
        while i < w.count {
            var length = 0
            if w[i] == "<" || w[i] == "'" {
                for literal in Self.patternLiterals {
                    if let n = Self.matches(w, at: i, literal) { length = n; break }
                }
            }
            if length == 0 {
                switch Self.regexClass(w[i]) {
                case .space:
                    i += 1
                    continue
                case .number:
                    length = 1
                case .letter, .other:
                    let cls = Self.regexClass(w[i])
                    var j = i + 1
                    while j < w.count && Self.regexClass(w[j]) == cls { j += 1 }
                    length = j - i
                }
            }
            encodePiece(w[i..<(i + length)], into: &ids)
            i += length
        }
    }

    // MARK: - BPE

    private func encodePiece(_ piece: ArraySlice<Unicode.Scalar>, into ids: inout [Int]) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(piece.count * 4)
        for s in piece { UTF8.encode(s) { bytes.append($0) } }
        // The slow tokenizer's cache starts with these two, so they map to their own ids.
        if bytes.elementsEqual(Self.startOfText.utf8) { ids.append(bosId); return }
        if bytes.elementsEqual(Self.endOfText.utf8) { ids.append(eosId); return }

        // Keyed by bytes, not String: String equality is canonical equivalence, Python's is not.
        lock.lock()
        let cached = cache[bytes]
        lock.unlock()
        if let cached {
            ids += cached
            return
        }
        let result = bpe(bytes)
        if bytes.count <= Self.cacheMaxPieceBytes {
            lock.lock()
            if cache.count >= Self.cacheLimit { cache.removeAll(keepingCapacity: true) }
            cache[bytes] = result
            lock.unlock()
        }
        ids += result
    }

    @inline(__always)
    private func rank(_ a: Int32, _ b: Int32) -> Merge? {
        merges[UInt64(UInt32(a)) << 32 | UInt64(UInt32(b))]
    }

    /// transformers' `CLIPTokenizer.bpe`: repeatedly merge every occurrence of the lowest-ranked pair.
    private func bpe(_ bytes: [UInt8]) -> [Int] {
        guard let last = bytes.last else { return [] }
        var word = bytes.dropLast().map { byteSymbol[Int($0)] } + [byteEndSymbol[Int(last)]]
        let none = Int32.max
        // ranks[k]: rank of the pair (word[k], word[k + 1]).
        var ranks = (0..<max(0, word.count - 1)).map { rank(word[$0], word[$0 + 1])?.rank ?? none }
        var newWord: [Int32] = [], oldIndex: [Int] = [], isNew: [Bool] = []
        while word.count > 1 {
            var best = none, bestAt = -1
            for k in 0..<ranks.count where ranks[k] < best { best = ranks[k]; bestAt = k }
            if bestAt < 0 { break }
            let first = word[bestAt], second = word[bestAt + 1]
            guard let merged = rank(first, second)?.result else { break }
            newWord.removeAll(keepingCapacity: true)
            oldIndex.removeAll(keepingCapacity: true)
            isNew.removeAll(keepingCapacity: true)
            var i = 0
            while i < word.count {
                if i + 1 < word.count && word[i] == first && word[i + 1] == second {
                    newWord.append(merged); oldIndex.append(i); isNew.append(true)
                    i += 2
                } else {
                    newWord.append(word[i]); oldIndex.append(i); isNew.append(false)
                    i += 1
                }
            }
            // Pairs of two untouched neighbours keep their rank; only pairs next to a merge are looked up.
            var newRanks = [Int32](repeating: none, count: max(0, newWord.count - 1))
            for k in 0..<newRanks.count {
                newRanks[k] = (isNew[k] || isNew[k + 1])
                    ? (rank(newWord[k], newWord[k + 1])?.rank ?? none)
                    : ranks[oldIndex[k]]
            }
            swap(&word, &newWord)
            ranks = newRanks
        }
        return word.map { symbolVocabId[Int($0)] }
    }

    // MARK: - Character classes (Python 3.11 / transformers' BasicTokenizer)

    /// `_clean_text` drops NUL, U+FFFD and `_is_control` characters (category C*, but not \t \n \r).
    private static func isDropped(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x09, 0x0A, 0x0D: return false
        case 0x00, 0xFFFD: return true
        case 0x20...0x7E: return false
        default: break
        }
        let p = s.properties
        guard let age = p.age,
              age.major < unicodeVersion.major || (age.major == unicodeVersion.major && age.minor <= unicodeVersion.minor)
        else { return true }
        switch p.generalCategory {
        case .control, .format, .surrogate, .privateUse, .unassigned: return true
        default: return false
        }
    }

    /// `_is_whitespace`: space, \t, \n, \r and category Zs.
    private static func isBasicWhitespace(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x20, 0x09, 0x0A, 0x0D: return true
        case 0x21...0x7E: return false
        default: return s.properties.generalCategory == .spaceSeparator
        }
    }

    /// Python's `str.split()` separators (`str.isspace`).
    private static func isPythonWhitespace(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            return true
        default:
            return false
        }
    }

    /// `BasicTokenizer._is_chinese_char`: the CJK ideograph blocks.
    private static func isCJK(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F, 0x2B740...0x2B81F,
             0x2B820...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F:
            return true
        default:
            return false
        }
    }

    /// Python's `str.lower()`: full lower-case mappings, and U+03A3 becomes final sigma (U+03C2) after a
    /// cased letter and not before one (case-ignorable characters skipped on both sides).
    private static func pythonLowercased(_ word: ArraySlice<Unicode.Scalar>) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(word.count)
        for i in word.indices {
            let s = word[i]
            if s.isASCII {
                out.append(s.value >= 0x41 && s.value <= 0x5A ? Unicode.Scalar(UInt8(s.value + 0x20)) : s)
            } else if s.value == 0x3A3 {
                out.append(isFinalSigma(word, at: i) ? "\u{3C2}" : "\u{3C3}")
            } else if s.properties.changesWhenLowercased {
                out.append(contentsOf: s.properties.lowercaseMapping.unicodeScalars)
            } else {
                out.append(s)
            }
        }
        return out
    }

    /// CPython's `handle_capital_sigma`: `\p{cased}\p{case-ignorable}* Σ !(\p{case-ignorable}* \p{cased})`.
    private static func isFinalSigma(_ word: ArraySlice<Unicode.Scalar>, at i: Int) -> Bool {
        var j = i - 1
        while j >= word.startIndex && isCaseIgnorable(word[j]) { j -= 1 }
        guard j >= word.startIndex && isCased(word[j]) else { return false }
        j = i + 1
        while j < word.endIndex && isCaseIgnorable(word[j]) { j += 1 }
        return j == word.endIndex || !isCased(word[j])
    }

    // Unicode 14.0 values where the stdlib's newer data differ (found by the exhaustive code-point sweep):
    // U+0295 ʕ was Ll (cased) until Unicode 16; U+1171E was Mn (case-ignorable) until Unicode 15.
    private static func isCased(_ s: Unicode.Scalar) -> Bool { s.value == 0x295 || s.properties.isCased }
    private static func isCaseIgnorable(_ s: Unicode.Scalar) -> Bool { s.value == 0x1171E || s.properties.isCaseIgnorable }

    /// OpenAI's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the others to U+0100 onwards.
    private static func bytesToUnicode() -> [Unicode.Scalar] {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                table[b] = Unicode.Scalar(UInt8(b))
            } else {
                table[b] = Unicode.Scalar(next)!  // 256 + at most 68: always a valid scalar
                next += 1
            }
        }
        return table
    }

    // MARK: - Files

    private static func readFile(_ path: String) throws -> Data {
        do {
            return try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw EngineError.io("cannot read \(path): \(error.localizedDescription)")
        }
    }

    private static func loadVocab(_ path: String) throws -> [String: Int] {
        let data = try readFile(path)
        do {
            return try JSONDecoder().decode([String: Int].self, from: data)
        } catch {
            throw EngineError.format("\(path): not a JSON object of token → id: \(error)")
        }
    }

    /// Merge pairs in rank order: the header line skipped, at most `maxMerges` kept (as transformers does).
    private static func loadMerges(_ path: String) throws -> [(String, String)] {
        let data = try readFile(path)
        guard let text = String(data: data, encoding: .utf8) else {
            throw EngineError.format("\(path): not UTF-8")
        }
        // Python reads with universal newlines; "\r\n" is one Character in Swift.
        var lines = text.trimmingCharacters(in: .whitespacesAndNewlines)
            .split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
        guard let header = lines.first, header.hasPrefix("#") else {
            throw EngineError.format("\(path): missing the \"#version\" header line")
        }
        lines.removeFirst()
        var pairs: [(String, String)] = []
        pairs.reserveCapacity(min(lines.count, maxMerges))
        for (n, line) in lines.prefix(maxMerges).enumerated() {
            let fields = line.split(whereSeparator: { $0.isWhitespace })
            guard fields.count == 2 else {
                throw EngineError.format("\(path): line \(n + 2) is not a pair of symbols: \"\(line.prefix(80))\"")
            }
            pairs.append((String(fields[0]), String(fields[1])))
        }
        return pairs
    }
}
