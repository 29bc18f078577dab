"""Instructions per request from a callgrind dump: the total, then the functions with the most
instructions of their own (callees excluded).

    python3 callgrind_self.py CALLGRIND_FILE REQUESTS [TOP] [LABEL]

Reads the uncompressed format (`--compress-strings=no --compress-pos=no`): a cost line follows a
`fn=` line (the function's own cost) or a `calls=` line (the cost of that call, which is the
callee's, so it is skipped here).
"""

import collections
import sys


def self_costs(path):
    costs = collections.Counter()
    function = None
    call_cost_next = False
    with open(path) as lines:
        for line in lines:
            if line.startswith("fn="):
                function = line[3:].rstrip("\n")
            elif line.startswith("calls="):
                call_cost_next = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                fields = line.split()
                if len(fields) < 2:
                    continue
                if call_cost_next:
                    call_cost_next = False
                else:
                    costs[function] += int(fields[1])
    return costs


def main():
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    label = sys.argv[4] if len(sys.argv) > 4 else ""
    costs = self_costs(path)
    total = sum(costs.values())
    print(f"{label}: {total / requests:.0f} instructions per request (user space, {requests} requests)")
    for function, cost in costs.most_common(top):
        print(f"{cost / requests:9.0f} {100 * cost / total:5.1f}%  {function[:140]}")


if __name__ == "__main__":
    main()
