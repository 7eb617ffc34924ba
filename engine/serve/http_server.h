// The HTTP transport of `freshrec serve` (Boost.Beast, event-driven): one I/O thread reads and writes
// every connection, a fixed pool of workers runs the handler. What a client cannot do to it:
//   - hold a worker by sending slowly: a worker only sees a request once it has arrived whole;
//   - hold a connection slot forever: the header must arrive within `header_timeout_ms` (an idle
//     kept-alive connection within `idle_timeout_ms`), the whole request within `request_timeout_ms`,
//     and the client must read the response within `write_timeout_ms`;
//   - open connections without end: beyond `max_connections` a new one gets 503 and is closed;
//   - queue work without end: beyond `max_queue` requests waiting for a worker, 503 (Retry-After: 1);
//   - send more than `max_body_bytes`, whether by Content-Length, chunked or compressed: the body's
//     bytes are counted as they arrive (413), and a Content-Encoding other than identity is refused
//     (415) since nothing is inflated;
//   - send headers larger than `max_header_bytes` (431), or a chunk-size line or trailer without end
//     (the read buffer is capped: 400);
//   - share the port: the listening socket is exclusive (no SO_REUSEPORT), a second server fails to
//     start.
// Torch-free, so it is tested with the sanitizers.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace freshrec {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // the target without its query
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;
  // A header's value ("" when absent); `name` in lower case.
  std::string header(const std::string& name) const;
};

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
};

// {"error": message} with a status; bytes of the message that are not UTF-8 are written as U+FFFD,
// so building an answer never throws on what a request contained.
HttpResponse error_response(int status, const std::string& message);
// The 500 that says only that the server's log has more.
HttpResponse internal_error();

struct HttpLimits {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port
  int workers = 8;
  size_t max_queue = 64;         // requests waiting for a worker
  size_t max_connections = 256;  // open connections
  size_t max_header_bytes = 16 << 10;
  size_t max_body_bytes = 4 << 20;
  int header_timeout_ms = 5000;    // a new connection's request header, whole
  int idle_timeout_ms = 10000;     // a kept-alive connection's next request header, whole
  int request_timeout_ms = 30000;  // a request, header and body, from when it was awaited
  int write_timeout_ms = 10000;    // the client reading the response
};

// What the transport refused or cut, for /metrics.
struct HttpCounters {
  uint64_t connections = 0;             // accepted
  uint64_t refused_connections = 0;     // over max_connections: 503 and closed
  uint64_t refused_queue_full = 0;      // 503: every worker busy and the queue full
  uint64_t timeouts = 0;                // connections closed for a deadline (header, request or write)
  uint64_t bodies_too_large = 0;        // 413
  uint64_t malformed = 0;               // 400, 415 or 431 from the transport
  uint64_t open_connections = 0;        // now
  uint64_t queued = 0;                  // now
};

class HttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;
  // Called once a request's header has arrived, before its body is read (on the I/O thread: keep it
  // cheap): a response it returns (a 401, say) is sent without reading the body.
  using HeaderCheck = std::function<std::optional<HttpResponse>(const HttpRequest&)>;

  HttpServer(HttpLimits limits, Handler handler, HeaderCheck check = {});
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and starts the I/O thread and the workers; returns the port. Throws std::runtime_error
  // naming the address and the OS error when it cannot listen (a port in use included).
  int start();
  // Stops accepting, closes every connection, joins the threads. Requests a worker is running
  // finish first; their answers are not sent.
  void stop();
  HttpCounters counters() const;

  struct State;  // the listener, the connections and the workers (http_server.cpp)

 private:
  std::unique_ptr<State> state_;
};

// A small blocking HTTP/1.1 client over one kept-alive connection, for `bench serve`, the tests and
// tools: every call is bounded by `timeout_ms` (name resolution aside: give it an address). A call on
// a kept-alive connection that the server had closed is sent once more on a new one, only when no
// byte of an answer came. Returns nullopt when the connection fails, the deadline passes or the
// answer is not HTTP (the reason in `last_error()`).
struct HttpReply {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // names in lower case
};

class HttpClient {
 public:
  HttpClient(std::string host, int port, int timeout_ms = 30000);
  ~HttpClient();
  using Headers = std::vector<std::pair<std::string, std::string>>;
  std::optional<HttpReply> get(const std::string& target, const Headers& headers = {});
  std::optional<HttpReply> post(const std::string& target, const std::string& body, const Headers& headers = {});
  const std::string& last_error() const { return error_; }

 private:
  std::optional<HttpReply> send(const std::string& method, const std::string& target, const std::string& body,
                                const Headers& headers);
  struct Connection;
  std::string host_;
  int port_;
  int timeout_ms_;
  std::unique_ptr<Connection> connection_;
  std::string error_;
};

}  // namespace freshrec
