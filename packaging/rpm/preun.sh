# applianced: on erase (not upgrade), disable and stop the units.
if [ $1 -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now applianced-agent.service applianced-controller.service >/dev/null 2>&1 || :
fi
