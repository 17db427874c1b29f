#!/bin/sh
# Fetches the app's page over the run's network, where the detached app step is reachable by
# its step id, and checks that it says $EXPECT. Exits non-zero when it does not.
url="${APP_URL:-http://app:80/}"
expect="${EXPECT:-Hello from the kiln multistep example}"
page=""
tries=0
# The app container starts in the background: give it a few seconds to listen.
while [ "$tries" -lt 20 ]; do
    if page=$(wget -q -O - "$url" 2>/dev/null); then
        break
    fi
    tries=$((tries + 1))
    sleep 0.5
done
if [ -z "$page" ]; then
    echo "FAIL: $url did not answer"
    exit 1
fi
echo "GET $url:"
echo "$page"
case "$page" in
    *"$expect"*) echo "PASS: the page says '$expect'" ;;
    *) echo "FAIL: the page does not say '$expect'"; exit 1 ;;
esac
