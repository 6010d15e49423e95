# applianced: after an upgrade, restart a running agent; after erase, reload units.
systemctl daemon-reload >/dev/null 2>&1 || :
if [ $1 -ge 1 ]; then
    systemctl try-restart applianced-agent.service >/dev/null 2>&1 || :
fi
