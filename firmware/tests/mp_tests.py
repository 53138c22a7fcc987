"""Runs every scenario on MicroPython (loaded by run_micropython.mjs); plain asserts, no pytest.

Prints one line per failure and the summary ``MP-TESTS <n> passed <m> failed``, then raises
if anything failed, so the node runner exits non-zero.
"""

import sys

import scenarios


def main():
    passed = 0
    failed = []
    for name, fn in scenarios.all_scenarios():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report every scenario, then fail the run
            failed.append(name)
            print("FAIL " + name + ": " + type(e).__name__ + ": " + str(e))
            sys.print_exception(e)
        else:
            passed += 1
    print("MP-TESTS " + str(passed) + " passed " + str(len(failed)) + " failed")
    if failed:
        raise SystemExit(1)


main()
