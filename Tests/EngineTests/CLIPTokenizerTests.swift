// CLIPTokenizer against transformers' slow CLIPTokenizer (corpus.json from tools/fixtures/make_tokenizer_fixture.py).
import Foundation
import XCTest
@testable import Engine

final class CLIPTokenizerTests: XCTestCase {
    private struct Corpus: Decodable {
        let transformers_version: String
        let max_length: Int
        let bos_id: Int
        let eos_id: Int
        let pad_id: Int
        let entries: [Entry]
    }

    private struct Entry: Decodable {
        let text: String
        let ids: [Int32]
        let attention_mask: [Int32]
        let encode: [Int]
    }

    private static let shared: Result<CLIPTokenizer, Error> = Result {
        try CLIPTokenizer(directory: Fixtures.path("tokenizer"))
    }

    private func tokenizer() throws -> CLIPTokenizer { try Self.shared.get() }

    private func corpus() throws -> Corpus {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("tokenizer/corpus.json")))
        return try JSONDecoder().decode(Corpus.self, from: data)
    }

    private static func describe(_ text: String) -> String {
        let shown = text.unicodeScalars.prefix(60).map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F
            ? String($0) : "\\u{\(String($0.value, radix: 16))}" }.joined()
        return "\"\(shown)\"" + (text.unicodeScalars.count > 60 ? "… (\(text.unicodeScalars.count) scalars)" : "")
    }

    func testCorpusMatchesTransformers() throws {
        let tok = try tokenizer()
        let corpus = try corpus()
        XCTAssertGreaterThanOrEqual(corpus.entries.count, 200)
        XCTAssertEqual([tok.bosId, tok.eosId, tok.padId], [corpus.bos_id, corpus.eos_id, corpus.pad_id])
        var failures: [String] = []
        for (n, e) in corpus.entries.enumerated() {
            let (ids, mask) = tok(e.text, maxLength: corpus.max_length)
            let full = tok.encode(e.text)
            if ids != e.ids || mask != e.attention_mask || full != e.encode {
                failures.append("#\(n) \(Self.describe(e.text)):\n  ids \(ids)\n  ref \(e.ids)\n  mask ok: \(mask == e.attention_mask), encode ok: \(full == e.encode)")
            }
        }
        XCTAssert(failures.isEmpty, "\(failures.count) of \(corpus.entries.count) strings differ from transformers \(corpus.transformers_version):\n"
                  + failures.prefix(10).joined(separator: "\n"))
    }

    func testAutoDIRPrompts() throws {
        let tok = try tokenizer()
        // transformers 4.57.3: CLIPTokenizer(vocab, merges)("A photo needs noise artifact reduction")["input_ids"]
        let (ids, mask) = tok("A photo needs noise artifact reduction")
        XCTAssertEqual(Array(ids.prefix(8)), [49406, 320, 1125, 2536, 9307, 37718, 12219, 49407])
        XCTAssertEqual(Array(ids.suffix(69)), [Int32](repeating: 49407, count: 69))
        XCTAssertEqual(mask.reduce(0, +), 8)
        let empty = tok("")
        XCTAssertEqual(Array(empty.ids.prefix(2)), [49406, 49407])
        XCTAssertEqual(empty.attentionMask.reduce(0, +), 2)
    }

    func testMaxLengthEdges() throws {
        let tok = try tokenizer()
        let text = "a photo of a cat"  // 5 tokens
        XCTAssertEqual(tok(text, maxLength: 0).ids, [])
        XCTAssertEqual(tok(text, maxLength: 1).ids, [49406])
        XCTAssertEqual(tok(text, maxLength: 2).ids, [49406, 49407])
        XCTAssertEqual(tok(text, maxLength: 4).ids, [49406, 320, 1125, 49407])
        XCTAssertEqual(tok(text, maxLength: 9).ids, [49406, 320, 1125, 539, 320, 2368, 49407, 49407, 49407])
        XCTAssertEqual(tok(text, maxLength: 9).attentionMask, [1, 1, 1, 1, 1, 1, 1, 0, 0])
    }

    func testNeverTrapsOnOddInput() throws {
        let tok = try tokenizer()
        var rng = TestRNG(seed: 7)
        var inputs: [String] = [
            String(decoding: [0xFF, 0xFE, 0xC3, 0x28, 0xE2, 0x82, 0x00, 0xF0, 0x9F], as: UTF8.self),
            String((0..<32).map { Character(Unicode.Scalar($0)!) }),
            String(repeating: "\u{301}", count: 10_000),
            String(repeating: "<|", count: 5_000),
            String(repeating: "'", count: 10_000),
            String(repeating: String(String.UnicodeScalarView([0x10FFFF, 0xE000, 0xFFFE, 0xFDD0].compactMap(Unicode.Scalar.init))),
                   count: 100),
        ]
        for _ in 0..<200 {
            var s = String.UnicodeScalarView()
            for _ in 0..<(Int(rng.next() % 64)) {
                if let scalar = Unicode.Scalar(UInt32(rng.next() % 0x11_0000)) { s.append(scalar) }
            }
            inputs.append(String(s))
        }
        for text in inputs {
            let (ids, mask) = tok(text)
            XCTAssertEqual(ids.count, 77)
            XCTAssertEqual(mask.count, 77)
            XCTAssertEqual(ids.first, 49406)
            XCTAssert(ids.allSatisfy { $0 >= 0 && $0 < 49408 })
        }
    }

    func testConcurrentCallsAgree() throws {
        let tok = try CLIPTokenizer(directory: Fixtures.path("tokenizer"))  // fresh cache
        let entries = try corpus().entries
        let mismatches = ManagedCounter()
        DispatchQueue.concurrentPerform(iterations: entries.count * 2) { k in
            let e = entries[k % entries.count]
            if tok(e.text).ids != e.ids { mismatches.increment() }
        }
        XCTAssertEqual(mismatches.value, 0)
    }

    // MARK: - Broken files

    private func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("clip-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    private func assertThrows(_ expected: (EngineError) -> Bool, _ what: String, _ body: () throws -> Void) {
        do {
            try body()
            XCTFail("\(what): no error thrown")
        } catch let error as EngineError {
            XCTAssert(expected(error), "\(what): unexpected \(error)")
        } catch {
            XCTFail("\(what): not an EngineError: \(error)")
        }
    }

    private static func isIO(_ e: EngineError) -> Bool { if case .io = e { return true }; return false }
    private static func isFormat(_ e: EngineError) -> Bool { if case .format = e { return true }; return false }

    func testMissingFilesThrowIO() throws {
        let dir = try temporaryDirectory()
        let vocab = Fixtures.path("tokenizer/vocab.json"), merges = Fixtures.path("tokenizer/merges.txt")
        let missing = dir.appendingPathComponent("nope").path
        assertThrows(Self.isIO, "missing vocab") { _ = try CLIPTokenizer(vocabPath: missing, mergesPath: merges) }
        assertThrows(Self.isIO, "missing merges") { _ = try CLIPTokenizer(vocabPath: vocab, mergesPath: missing) }
        assertThrows(Self.isIO, "empty directory") { _ = try CLIPTokenizer(directory: dir.path) }
    }

    func testCorruptFilesThrowFormat() throws {
        let dir = try temporaryDirectory()
        let goodVocab = Fixtures.path("tokenizer/vocab.json"), goodMerges = Fixtures.path("tokenizer/merges.txt")
        func write(_ name: String, _ bytes: [UInt8]) throws -> String {
            let url = dir.appendingPathComponent(name)
            try Data(bytes).write(to: url)
            return url.path
        }
        let cases: [(String, [UInt8], Bool)] = [  // (what, content, is it the vocab file)
            ("vocab not JSON", Array("not json".utf8), true),
            ("vocab truncated", Array(try Data(contentsOf: URL(fileURLWithPath: goodVocab)).prefix(1000)), true),
            ("vocab is an array", Array("[1, 2, 3]".utf8), true),
            ("vocab ids not integers", Array("{\"a\": \"b\"}".utf8), true),
            ("vocab without special tokens", Array("{\"a\": 0, \"b\": 1}".utf8), true),
            ("vocab id out of range", Array("{\"<|startoftext|>\": 0, \"<|endoftext|>\": 99999999999}".utf8), true),
            ("vocab id negative", Array("{\"<|startoftext|>\": -1, \"<|endoftext|>\": 1}".utf8), true),
            ("empty vocab file", [], true),
            ("merges without header", Array("i n\nt h\n".utf8), false),
            ("merges with a 3-field line", Array("#version: 0.2\ni n\nt h e\n".utf8), false),
            ("merges with a 1-field line", Array("#version: 0.2\ni n\nth\n".utf8), false),
            ("merges not UTF-8", [0x23, 0x76, 0x0A, 0xFF, 0x20, 0x61, 0x0A], false),
            ("empty merges file", [], false),
        ]
        for (n, (what, bytes, isVocab)) in cases.enumerated() {
            let path = try write("\(n)", bytes)
            assertThrows(Self.isFormat, what) {
                _ = try CLIPTokenizer(vocabPath: isVocab ? path : goodVocab, mergesPath: isVocab ? goodMerges : path)
            }
        }
    }

    func testHeaderOnlyMergesGiveByteTokens() throws {
        let dir = try temporaryDirectory()
        let merges = dir.appendingPathComponent("merges.txt")
        try Data("#version: 0.2\r\n".utf8).write(to: merges)
        let tok = try CLIPTokenizer(vocabPath: Fixtures.path("tokenizer/vocab.json"), mergesPath: merges.path)
        // Without merges every byte is its own token; "é" is two UTF-8 bytes (Ã, ©</w>).
        XCTAssertEqual(tok.encode("ab é"), [64, 321, 127, 358])
    }

    // MARK: - Opt-in exhaustive sweep

    /// Every code point alone and in final-sigma contexts, against a file written by
    /// `make_tokenizer_fixture.py --sweep PATH` (about 45 MB, so not committed).
    /// Run with CLIP_TOKENIZER_SWEEP=PATH.
    func testCodePointSweep() throws {
        guard let path = ProcessInfo.processInfo.environment["CLIP_TOKENIZER_SWEEP"] else {
            throw XCTSkip("set CLIP_TOKENIZER_SWEEP to a file from make_tokenizer_fixture.py --sweep")
        }
        let tok = try tokenizer()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var failures: [String] = [], checked = 0
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard fields.count == 4, let cp = UInt32(fields[0], radix: 16), let scalar = Unicode.Scalar(cp) else {
                XCTFail("bad sweep line: \(line.prefix(80))")
                return
            }
            let c = String(Character(scalar))
            for (form, expected) in zip([c, "A" + c + "\u{3A3}", "A\u{3A3}" + c + "a"], fields[1...]) {
                let got = tok.encode(form).map(String.init).joined(separator: " ")
                if got != expected { failures.append("U+\(String(cp, radix: 16)) \(Self.describe(form)): \(got) vs \(expected)") }
                checked += 1
            }
        }
        XCTAssert(failures.isEmpty, "\(failures.count) of \(checked) differ:\n" + failures.prefix(30).joined(separator: "\n"))
    }
}

/// A lock-protected counter for concurrent tests.
private final class ManagedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
