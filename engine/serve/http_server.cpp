// HTTP transport on Boost.Beast; see http_server.h.
#include "engine/serve/http_server.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <array>
#include <optional>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace freshrec {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

HttpResponse error_response(int status, const std::string& message) {
  return {status, nlohmann::json({{"error", message}}).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
          "application/json", {}};
}

HttpResponse internal_error() {  // allocates nothing it could fail on but the strings themselves
  return {500, "{\"error\": \"internal error (the server's log says more)\"}", "application/json", {}};
}

std::string HttpRequest::header(const std::string& name) const {
  const auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

namespace {

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}


// A fixed set of threads taking jobs from a bounded queue.
class WorkerPool {
 public:
  WorkerPool(int threads, size_t max_queue) : max_queue_(max_queue) {
    for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { run(); });
  }
  ~WorkerPool() { stop(); }
  // False when the queue is full (or the pool stopped): the caller answers 503.
  bool try_submit(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_ || queue_.size() >= max_queue_) return false;
      queue_.push_back(std::move(job));
    }
    ready_.notify_one();
    return true;
  }
  size_t queued() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return queue_.size();
  }
  // Running jobs finish; waiting ones are dropped.
  void stop() {
    std::deque<std::function<void()>> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
      stopping_ = true;
      dropped.swap(queue_);
    }
    ready_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void run() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (stopping_) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job();
    }
  }
  const size_t max_queue_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace

// The sessions live in the io_context's pending handlers and use the settings and counters here:
// stop() destroys the io_context (closing every connection) while those are still alive.
struct HttpServer::State {
  HttpLimits limits;
  Handler handler;
  HeaderCheck check;
  std::atomic<uint64_t> connections{0}, refused_connections{0}, refused_queue_full{0}, timeouts{0}, too_large{0},
      malformed{0}, open{0};
  std::unique_ptr<WorkerPool> pool;
  std::unique_ptr<net::io_context> ioc = std::make_unique<net::io_context>(1);
  std::optional<tcp::acceptor> acceptor{std::in_place, *ioc};
  std::optional<net::steady_timer> accept_pause{std::in_place, *ioc};
  std::thread io_thread;
  bool started = false, stopped = false;

  void accept();
  ~State() { shut(); }
  // Stops the I/O thread, lets running jobs finish, then closes the listener and every connection.
  void shut() {
    if (ioc) ioc->stop();
    if (io_thread.joinable()) io_thread.join();
    if (pool) pool->stop();
    acceptor.reset();
    accept_pause.reset();
    ioc.reset();
  }
};

namespace {

// One connection: header, checks, body, a worker, the answer; again while kept alive.
class Session : public std::enable_shared_from_this<Session> {
 public:
  // The read buffer holds what the parser has not consumed yet: a header, a chunk's size line, a
  // trailer. Capped, so a chunk extension or trailer without end cannot grow it (Beast bounds the
  // header and the body, not those).
  Session(tcp::socket socket, HttpServer::State& state)
      : stream_(std::move(socket)), state_(state), buffer_(state.limits.max_header_bytes + (64 << 10)) {
    ++state_.open;
  }
  ~Session() { --state_.open; }

  void start() { read_header(state_.limits.header_timeout_ms); }
  // Over the connection limit: the answer, then the socket closed at once (no lingering: a flood of
  // refused connections must not hold descriptors).
  void refuse(const HttpResponse& response) {
    refused_ = true;
    reply(response, /*close=*/true);
  }

 private:
  const HttpLimits& limits() const { return state_.limits; }

  void read_header(int timeout_ms) {
    awaited_ = Clock::now();
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(std::min<size_t>(limits().max_header_bytes, UINT32_MAX)));
    parser_->body_limit(limits().max_body_bytes);
    stream_.expires_after(milliseconds(timeout_ms));
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    const auto& h = parser_->get();
    request_ = HttpRequest{};
    request_.method = std::string(h.method_string());
    const std::string target(h.target());
    request_.path = target.substr(0, target.find('?'));
    for (const auto& field : h) request_.headers[lower(std::string(field.name_string()))] = std::string(field.value());
    keep_alive_ = h.keep_alive();
    const std::string encoding = lower(request_.header("content-encoding"));
    if (!encoding.empty() && encoding != "identity") {
      ++state_.malformed;
      return reply(error_response(415, "a Content-Encoding is not accepted: send the body uncompressed"), true);
    }
    if (parser_->content_length() && *parser_->content_length() > limits().max_body_bytes) {
      ++state_.too_large;
      return reply(too_large(), true);
    }
    if (state_.check) {
      std::optional<HttpResponse> early;
      try {
        early = state_.check(request_);
      } catch (const std::exception& e) {
        spdlog::error("request check failed: {}", e.what());
        early = internal_error();
      }
      if (early) return reply(*early, /*close=*/!parser_->is_done() || !keep_alive_);  // its body stays unread
    }
    if (beast::iequals(h[http::field::expect], "100-continue") && !parser_->is_done()) {
      continue_ = {http::status::continue_, 11};
      stream_.expires_after(milliseconds(limits().write_timeout_ms));
      return http::async_write(stream_, continue_, [self = shared_from_this()](beast::error_code e, size_t) {
        if (e) return self->on_write_error(e);
        self->read_body();
      });
    }
    read_body();
  }

  void read_body() {
    // The whole request's deadline counts from when it was awaited.
    stream_.expires_at(awaited_ + milliseconds(limits().request_timeout_ms));
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) { self->on_body(ec); });
  }

  void on_body(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    stream_.expires_never();  // no operation is pending while a worker answers
    request_.body = std::move(parser_->get().body());
    auto self = shared_from_this();
    const bool queued = state_.pool->try_submit([self] {
      HttpResponse response;
      try {
        response = self->state_.handler(self->request_);
      } catch (const std::exception& e) {
        spdlog::error("request failed: {}", e.what());  // details stay in the log, never in the answer
        response = internal_error();
      } catch (...) {
        spdlog::error("request failed: an exception of unknown type");
        response = internal_error();
      }
      try {
        net::post(self->stream_.get_executor(),
                  [self, response = std::move(response)] { self->reply(response, !self->keep_alive_); });
      } catch (const std::exception& e) {  // out of memory: the connection closes with the session
        spdlog::error("http: cannot queue an answer: {}", e.what());
      }
    });
    if (!queued) {
      ++state_.refused_queue_full;
      HttpResponse busy = error_response(503, "the server is busy (every worker and the queue are full): retry");
      busy.headers.emplace_back("Retry-After", "1");
      reply(busy, !keep_alive_);
    }
  }

  HttpResponse too_large() const {
    return error_response(413, "request body over " + std::to_string(limits().max_body_bytes) + " bytes");
  }

  void on_read_error(beast::error_code ec) {
    if (ec == beast::error::timeout) {
      ++state_.timeouts;  // the stream closed the socket
      return;
    }
    if (ec == http::error::end_of_stream || ec == http::error::partial_message || ec == net::error::eof ||
        ec == net::error::connection_reset || ec == net::error::operation_aborted)
      return;  // the client went away
    if (ec == http::error::body_limit) {  // by Content-Length (with the header) or counted as it came
      ++state_.too_large;
      return reply(too_large(), true);
    }
    ++state_.malformed;
    if (ec == http::error::header_limit)
      return reply(error_response(431, "request header over " + std::to_string(limits().max_header_bytes) + " bytes"), true);
    if (ec == http::error::buffer_overflow)
      return reply(error_response(400, "malformed HTTP request: a line (chunk size, trailer) without end"), true);
    reply(error_response(400, "malformed HTTP request"), true);
  }

  void on_write_error(beast::error_code ec) {
    if (ec == beast::error::timeout) ++state_.timeouts;
  }

  void reply(const HttpResponse& r, bool close) {
    response_ = {};
    response_.version(11);
    response_.result(static_cast<unsigned>(r.status));
    response_.set(http::field::content_type, r.content_type);
    for (const auto& [name, value] : r.headers) response_.set(name, value);
    response_.body() = r.body;
    response_.keep_alive(!close);
    response_.prepare_payload();
    stream_.expires_after(milliseconds(refused_ ? std::min(1000, limits().write_timeout_ms) : limits().write_timeout_ms));
    http::async_write(stream_, response_, [self = shared_from_this(), close](beast::error_code ec, size_t) {
      // What an idle kept-alive connection holds is its buffer alone.
      self->request_ = HttpRequest{};
      self->response_ = {};
      if (ec) return self->on_write_error(ec);
      if (self->refused_) return self->stream_.close();
      if (close) return self->linger();
      self->read_header(self->limits().idle_timeout_ms);
    });
  }

  // Closes after an answer sent before the request was read whole (413, 401, ...): stop sending, then
  // read and drop what the client still sends for a moment, so it reads the answer rather than a reset.
  void linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(milliseconds(1000));
    drain();
  }
  void drain() {
    stream_.async_read_some(net::buffer(sink_), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->drained_ += n;
      if (!ec && self->drained_ < (1u << 20)) self->drain();
    });
  }

  beast::tcp_stream stream_;
  HttpServer::State& state_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  HttpRequest request_;
  bool keep_alive_ = false;
  Clock::time_point awaited_;
  http::response<http::empty_body> continue_;
  http::response<http::string_body> response_;
  std::array<char, 4096> sink_{};
  size_t drained_ = 0;
  bool refused_ = false;
};

}  // namespace

void HttpServer::State::accept() {
  acceptor->async_accept(net::make_strand(*ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted) return;  // stopping
    const int code = ec.value();
    if (ec && (code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM)) {
      // Out of descriptors or memory: wait a moment rather than spin.
      spdlog::warn("http: accept failed: {}", ec.message());
      accept_pause->expires_after(milliseconds(100));
      accept_pause->async_wait([this](beast::error_code e) {
        if (!e) accept();
      });
      return;
    }
    accept();  // the next one first, so nothing below can leave the server deaf
    if (ec) return;  // that connection's own trouble (aborted before accepted, ...)
    try {
      ++connections;
      auto session = std::make_shared<Session>(std::move(socket), *this);
      if (open > limits.max_connections) {
        ++refused_connections;
        HttpResponse busy = error_response(503, "too many connections: retry");
        busy.headers.emplace_back("Retry-After", "1");
        session->refuse(busy);
      } else {
        session->start();
      }
    } catch (const std::exception& e) {
      spdlog::error("http: cannot start a connection: {}", e.what());
    }
  });
}

HttpServer::HttpServer(HttpLimits limits, Handler handler, HeaderCheck check) : state_(std::make_unique<State>()) {
  if (limits.port < 0 || limits.port > 65535)
    throw std::invalid_argument("port " + std::to_string(limits.port) + " is not within 0 to 65535");
  if (limits.workers < 1 || limits.max_connections < 1)
    throw std::invalid_argument("the HTTP server needs at least one worker and one connection");
  state_->limits = std::move(limits);
  state_->handler = std::move(handler);
  state_->check = std::move(check);
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::start() {
  auto& s = *state_;
  if (s.started) throw std::logic_error("HttpServer::start called twice");
  const std::string where = s.limits.host + ":" + std::to_string(s.limits.port);
  beast::error_code ec;
  tcp::resolver resolver(*s.ioc);
  const auto endpoints = resolver.resolve(s.limits.host, std::to_string(s.limits.port),
                                          tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || endpoints.empty())
    throw std::runtime_error("serve: cannot listen on " + where + ": " + (ec ? ec.message() : "no such address"));
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  // SO_REUSEADDR lets a restart bind while old connections linger in TIME_WAIT; on Linux it never lets
  // two sockets listen on one port (SO_REUSEPORT would, and is not set).
  if (!s.acceptor->open(endpoint.protocol(), ec))
    s.acceptor->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor->bind(endpoint, ec);
  if (!ec) s.acceptor->listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw std::runtime_error("serve: cannot listen on " + where + ": " + ec.message());
  const int port = s.acceptor->local_endpoint().port();
  s.pool = std::make_unique<WorkerPool>(s.limits.workers, s.limits.max_queue);
  s.started = true;
  s.accept();
  s.io_thread = std::thread([&s] {
    for (;;) {
      try {
        s.ioc->run();
        return;
      } catch (const std::exception& e) {  // a handler threw (out of memory, say): log it, keep serving
        spdlog::error("http: {}", e.what());
      }
    }
  });
  return port;
}

void HttpServer::stop() {
  auto& s = *state_;
  if (!s.started || s.stopped) return;
  s.stopped = true;
  s.shut();
}

HttpCounters HttpServer::counters() const {
  const auto& s = *state_;
  HttpCounters c;
  c.connections = s.connections, c.refused_connections = s.refused_connections;
  c.refused_queue_full = s.refused_queue_full, c.timeouts = s.timeouts, c.bodies_too_large = s.too_large;
  c.malformed = s.malformed, c.open_connections = s.open;
  c.queued = s.pool ? s.pool->queued() : 0;
  return c;
}

// ---- client ------------------------------------------------------------------------------------

struct HttpClient::Connection {
  net::io_context ioc;
  beast::tcp_stream stream{ioc};
  beast::flat_buffer buffer;
  bool open = false;
  // Runs the pending operations; the stream's deadline bounds them.
  void run() {
    ioc.restart();
    ioc.run();
  }
  void close() {
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.close();
    buffer.clear();
    open = false;
  }
};

HttpClient::HttpClient(std::string host, int port, int timeout_ms)
    : host_(std::move(host)), port_(port), timeout_ms_(timeout_ms), connection_(std::make_unique<Connection>()) {}

HttpClient::~HttpClient() = default;

std::optional<HttpReply> HttpClient::get(const std::string& target, const Headers& headers) {
  return send("GET", target, "", headers);
}

std::optional<HttpReply> HttpClient::post(const std::string& target, const std::string& body, const Headers& headers) {
  return send("POST", target, body, headers);
}

std::optional<HttpReply> HttpClient::send(const std::string& method, const std::string& target, const std::string& body,
                                          const Headers& headers) {
  auto& c = *connection_;
  http::request<http::string_body> request;
  request.method_string(method);
  request.target(target);
  request.version(11);
  request.set(http::field::host, host_ + ":" + std::to_string(port_));
  if (method == "POST") request.set(http::field::content_type, "application/json");
  for (const auto& [name, value] : headers) request.set(name, value);
  request.body() = body;
  request.keep_alive(true);
  request.prepare_payload();
  // One deadline for the whole call, however many phases (and at most one retry) it takes.
  const auto deadline = Clock::now() + milliseconds(timeout_ms_);
  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool reused = c.open;
    beast::error_code ec;
    if (!c.open) {
      tcp::resolver resolver(c.ioc);
      const auto endpoints = resolver.resolve(host_, std::to_string(port_), ec);
      if (ec) {
        error_ = "cannot resolve " + host_ + ": " + ec.message();
        return std::nullopt;
      }
      c.stream.expires_at(deadline);
      c.stream.async_connect(endpoints, [&](beast::error_code e, const tcp::endpoint&) { ec = e; });
      c.run();
      if (ec) {
        error_ = "cannot connect to " + host_ + ":" + std::to_string(port_) + ": " + ec.message();
        c.close();
        return std::nullopt;
      }
      c.open = true;
    }
    c.stream.expires_at(deadline);
    bool written = false;
    http::async_write(c.stream, request, [&](beast::error_code e, size_t) { ec = e, written = !e; });
    c.run();
    http::response_parser<http::string_body> parser;
    parser.body_limit(1ull << 30);
    if (!ec) {
      http::async_read(c.stream, c.buffer, parser, [&](beast::error_code e, size_t) { ec = e; });
      c.run();
    }
    if (ec) {
      c.close();
      // A kept-alive connection the server had closed: once more on a new one, but only when the
      // server cannot have seen the request (the write failed), or closed without a byte of answer.
      const bool stale = ec == net::error::eof || ec == http::error::end_of_stream ||
                         ec == net::error::connection_reset || ec == net::error::broken_pipe;
      if (reused && stale && (!written || !parser.got_some())) continue;
      error_ = method + " " + target + ": " + ec.message();
      return std::nullopt;
    }
    auto response = parser.release();
    HttpReply reply;
    reply.status = static_cast<int>(response.result_int());
    reply.body = std::move(response.body());
    for (const auto& field : response) reply.headers[lower(std::string(field.name_string()))] = std::string(field.value());
    if (!response.keep_alive()) c.close();
    return reply;
  }
  return std::nullopt;
}

}  // namespace freshrec
