// The HTTP transport of `serve` against hostile clients: slow senders, oversized, chunked and
// compressed bodies, floods of connections and requests, a second server on the same port. Raw
// sockets play the clients, so every byte is what an attacker would send.
#ifdef FRESHREC_WITH_HTTP
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "engine/serve/http_server.h"

using namespace freshrec;

namespace {

// A client socket with a receive deadline, so no test waits without one.
class RawClient {
 public:
  explicit RawClient(int port, int receive_timeout_ms = 10000) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{receive_timeout_ms / 1000, (receive_timeout_ms % 1000) * 1000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  }
  ~RawClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connected() const { return connected_; }
  // False once the peer has closed or reset the connection.
  bool send(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }
  // Everything until the peer closes (or the deadline passes).
  std::string read_all() {
    std::string out;
    char buffer[4096];
    for (;;) {
      const ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
      if (n <= 0) return out;
      out.append(buffer, static_cast<size_t>(n));
    }
  }
  // One response's status line and headers (enough to read the status).
  std::string read_head() {
    std::string out;
    char c;
    while (out.find("\r\n\r\n") == std::string::npos && ::recv(fd_, &c, 1, 0) == 1) out += c;
    return out;
  }
  // True when the peer has closed the connection: a read returns end of file or an error other than
  // the deadline.
  bool closed_by_peer() {
    char c;
    const ssize_t n = ::recv(fd_, &c, 1, 0);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

// Waits for `done`, at most 60 s (a hang fails the test instead of stalling the suite).
bool wait_until(const std::function<bool()>& done) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

int status_of(const std::string& response) {
  if (response.rfind("HTTP/1.1 ", 0) != 0 || response.size() < 12) return 0;
  return std::stoi(response.substr(9, 3));
}

HttpResponse echo(const HttpRequest& request) {
  return {200, "{\"bytes\": " + std::to_string(request.body.size()) + "}", "application/json", {}};
}

}  // namespace

// Eight connections that send one header byte at a time neither hold a worker nor stop the server
// from answering others, and each is closed at its header deadline.
TEST(Http, SlowClientsNeitherStallTheServerNorKeepTheirConnections) {
  HttpLimits limits;
  limits.port = 0, limits.workers = 2, limits.header_timeout_ms = 1500;
  HttpServer server(limits, echo);
  const int port = server.start();
  std::vector<std::unique_ptr<RawClient>> slow;
  for (int i = 0; i < 8; ++i) {
    slow.push_back(std::make_unique<RawClient>(port, 200));
    ASSERT_TRUE(slow.back()->connected());
    ASSERT_TRUE(slow.back()->send("P"));
  }
  // While they trickle, good requests are answered, each one.
  HttpClient client("127.0.0.1", port, 5000);
  for (int i = 0; i < 20; ++i) {
    const auto reply = client.post("/x", std::string(100, 'a'));
    ASSERT_TRUE(reply) << client.last_error();
    EXPECT_EQ(reply->status, 200);
    for (auto& s : slow) s->send("O");  // a byte every round keeps a per-read timeout from firing
  }
  // Then every slow connection is closed by the server, however often it sends: the header has a
  // deadline of its own (checked with a deadline of 60 s, not measured).
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (auto& s : slow) {
    bool closed = false;
    while (!closed && std::chrono::steady_clock::now() < give_up) closed = !s->send("S") || s->closed_by_peer();
    EXPECT_TRUE(closed) << "a slow client kept its connection";
  }
  // The socket closes before the server's handler counts the timeout: wait for the count (bounded).
  EXPECT_TRUE(wait_until([&] { return server.counters().timeouts >= 8; })) << server.counters().timeouts;
  server.stop();
}

// The body limit holds however the body comes: a Content-Length over it is refused before a byte of
// the body is read, a chunked body is counted as it arrives, and compressed bodies are refused.
TEST(Http, BodyLimitsHoldForChunkedAndCompressedBodies) {
  HttpLimits limits;
  limits.port = 0, limits.max_body_bytes = 64 << 10;
  HttpServer server(limits, echo);
  const int port = server.start();
  {
    RawClient c(port);
    c.send("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 50000000\r\n\r\n");
    EXPECT_EQ(status_of(c.read_all()), 413);
  }
  {
    // Up to 32 MiB of chunks against a 64 KiB limit: the server answers 413 and stops reading.
    RawClient c(port);
    c.send("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    const std::string chunk = "4000\r\n" + std::string(0x4000, 'x') + "\r\n";
    size_t sent = 0;
    while (sent < (32u << 20) && c.send(chunk)) sent += 0x4000;
    EXPECT_LT(sent, 32u << 20) << "the server read a chunked body far over its limit";
    EXPECT_EQ(status_of(c.read_all()), 413);
  }
  {
    RawClient c(port);
    c.send("POST /x HTTP/1.1\r\nHost: a\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd");
    EXPECT_EQ(status_of(c.read_all()), 415);
  }
  {
    RawClient c(port);
    c.send("GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(64 << 10, 'h') + "\r\n\r\n");
    EXPECT_EQ(status_of(c.read_all()), 431);
  }
  {
    RawClient c(port);
    c.send("NOT HTTP AT ALL\r\n\r\n");
    EXPECT_EQ(status_of(c.read_all()), 400);
  }
  {
    // A chunk-size line that never ends (an endless extension): the read buffer is capped, so the
    // server answers 400 rather than holding what comes.
    RawClient c(port);
    c.send("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;");
    size_t sent = 0;
    while (sent < (32u << 20) && c.send(std::string(0x4000, 'e'))) sent += 0x4000;
    EXPECT_LT(sent, 32u << 20) << "the server kept reading an endless chunk-size line";
    EXPECT_EQ(status_of(c.read_all()), 400);
  }
  // A body within the limit, chunked, still works, and on a kept-alive connection.
  RawClient c(port);
  c.send("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
  const std::string head = c.read_head();
  EXPECT_EQ(status_of(head), 200) << head;
  const auto counters = server.counters();
  EXPECT_EQ(counters.bodies_too_large, 2u);
  EXPECT_EQ(counters.malformed, 4u);
  server.stop();
}

// Beyond the connection limit a new connection gets 503 and is closed; with every worker busy and
// the queue full a request gets 503 at once; both recover when the load goes.
TEST(Http, ConnectionLimitAndAFullQueueAnswer503) {
  std::mutex mutex;
  std::condition_variable released;
  bool release = false;
  std::atomic<int> running{0};
  HttpLimits limits;
  limits.port = 0, limits.workers = 1, limits.max_queue = 1, limits.max_connections = 6;
  limits.header_timeout_ms = 60000;  // the idle connections below must stay open however slow the machine
  HttpServer server(limits, [&](const HttpRequest& request) {
    if (request.path == "/block") {
      ++running;
      std::unique_lock<std::mutex> lock(mutex);
      released.wait_for(lock, std::chrono::seconds(30), [&] { return release; });
    }
    return echo(request);
  });
  const int port = server.start();

  // One request runs (the worker blocks), one waits in the queue, the third is refused.
  auto blocked = std::async(std::launch::async, [&] { return HttpClient("127.0.0.1", port).post("/block", "a"); });
  ASSERT_TRUE(wait_until([&] { return running > 0; }));
  auto queued = std::async(std::launch::async, [&] { return HttpClient("127.0.0.1", port).post("/x", "b"); });
  ASSERT_TRUE(wait_until([&] { return server.counters().queued > 0; }));
  const auto refused = HttpClient("127.0.0.1", port).post("/x", "c");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503);
  EXPECT_EQ(refused->headers.at("retry-after"), "1");
  ASSERT_TRUE(wait_until([&] { return server.counters().open_connections <= 2; }));

  // Idle connections up to the limit (6, the two above included): the next one is refused.
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 4; ++i) idle.push_back(std::make_unique<RawClient>(port));
  ASSERT_TRUE(wait_until([&] { return server.counters().open_connections >= 6; }));
  RawClient extra(port);
  extra.send("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
  EXPECT_EQ(status_of(extra.read_all()), 503);

  {
    std::lock_guard<std::mutex> lock(mutex);
    release = true;
  }
  released.notify_all();
  EXPECT_EQ(blocked.get()->status, 200);
  EXPECT_EQ(queued.get()->status, 200);
  idle.clear();
  ASSERT_TRUE(wait_until([&] { return server.counters().open_connections <= 2; }));
  const auto after = HttpClient("127.0.0.1", port).post("/x", "d");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200);
  const auto counters = server.counters();
  EXPECT_EQ(counters.refused_queue_full, 1u);
  EXPECT_EQ(counters.refused_connections, 1u);
  server.stop();
}

// A second server cannot listen on a port one already serves; a restart after a stop can.
TEST(Http, APortServesOneServerOnly) {
  HttpLimits limits;
  limits.port = 0;
  HttpServer first(limits, echo);
  limits.port = first.start();
  HttpServer second(limits, echo);
  try {
    second.start();
    ADD_FAILURE() << "two servers listen on port " << limits.port;
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(limits.port)), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
  }
  HttpClient("127.0.0.1", limits.port).get("/warm");  // a connection that the stop closes
  first.stop();
  HttpServer third(limits, echo);
  EXPECT_EQ(third.start(), limits.port);
  EXPECT_THROW(HttpServer(HttpLimits{"127.0.0.1", 70000}, echo), std::invalid_argument);
}

// Keep-alive, Expect: 100-continue (what curl sends with a large body), a header check that answers
// before the body is read, and a handler that throws: a 500 without its text.
TEST(Http, KeepAliveContinueEarlyAnswersAndHandlerErrors) {
  HttpLimits limits;
  limits.port = 0;
  limits.idle_timeout_ms = 60000;  // one connection carries every request, however slow the machine
  HttpServer server(
      limits,
      [](const HttpRequest& request) -> HttpResponse {
        if (request.path == "/throw") throw std::runtime_error("secret /internal/path");
        return echo(request);
      },
      [](const HttpRequest& request) -> std::optional<HttpResponse> {
        if (request.path == "/private" && request.header("authorization") != "Bearer ok") return HttpResponse{401, "{}"};
        return std::nullopt;
      });
  const int port = server.start();
  HttpClient client("127.0.0.1", port);
  for (int i = 0; i < 50; ++i) ASSERT_EQ(client.post("/x", std::string(i, 'z'))->body, "{\"bytes\": " + std::to_string(i) + "}");
  EXPECT_EQ(server.counters().connections, 1u);  // one connection carried them all

  RawClient c(port);
  c.send("POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
  EXPECT_EQ(status_of(c.read_head()), 100);
  c.send("abc");
  EXPECT_EQ(status_of(c.read_head()), 200);

  EXPECT_EQ(client.post("/private", "x")->status, 401);
  EXPECT_EQ(client.post("/private", "x", {{"Authorization", "Bearer ok"}})->status, 200);
  const auto failed = client.get("/throw");
  ASSERT_TRUE(failed);
  EXPECT_EQ(failed->status, 500);
  EXPECT_EQ(failed->body.find("secret"), std::string::npos) << failed->body;
  server.stop();
}
#endif
