import XCTest
@testable import Worker

final class ZMQTests: XCTestCase {
    func testLinkedLibzmqVersion() {
        XCTAssertTrue(ZMQ.version.hasPrefix("4."), ZMQ.version)
    }
}
