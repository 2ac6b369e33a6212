module.exports = {
  apps: [{
    name: 'big-heap',
    script: 'server.js',
    node_args: '--max-old-space-size=4096',
    args: ['--color', '--port', '3000'],
  }, {
    name: 'inspect',
    script: 'server.js',
    interpreter_args: '--trace-warnings',
  }],
};
