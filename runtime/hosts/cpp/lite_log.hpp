// MindSpore Lite's log (glog on stderr) reads GLOG_v when the library loads, before main() can set it, and
// its warnings would break the host's one-line errors. Unless the user sets GLOG_v, LiteLog collects what
// is written to stderr meanwhile; an error then names the first message Lite logged as [ERROR] (its Status
// text is often just "Common error code."), as runtime/mslite/native.py does.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace ddpm {

class LiteLog {
public:
    LiteLog() {
        if (std::getenv("GLOG_v")) return;  // the user chose a level: let it through
        capture_ = std::tmpfile();
        saved_ = capture_ ? dup(2) : -1;
        if (saved_ < 0 || dup2(fileno(capture_), 2) < 0) stop();
    }
    LiteLog(const LiteLog&) = delete;
    LiteLog& operator=(const LiteLog&) = delete;
    ~LiteLog() { stop(); }

    // Restores stderr; returns the message of the first [ERROR] line collected, or "".
    std::string stop() {
        std::string first;
        if (saved_ >= 0) {
            std::fflush(stderr);
            dup2(saved_, 2);
            close(saved_);
            saved_ = -1;
            std::rewind(capture_);
            char line[4096];
            while (first.empty() && std::fgets(line, sizeof line, capture_)) first = error_message(line);
        }
        if (capture_) std::fclose(capture_);
        capture_ = nullptr;
        return first;
    }

private:
    // "[ERROR] CORE(pid,tid,program):date [file:line] Function] message" -> "message".
    static std::string error_message(std::string line) {
        line.erase(line.find_last_not_of(" \r\n") + 1);
        if (line.rfind("[ERROR] ", 0) != 0) return "";
        const size_t file = line.find('[', 8);
        const size_t function = file == std::string::npos ? file : line.find("] ", file);
        const size_t message = function == std::string::npos ? function : line.find("] ", function + 2);
        return message == std::string::npos ? "" : line.substr(message + 2);
    }

    std::FILE* capture_ = nullptr;
    int saved_ = -1;
};

}  // namespace ddpm
