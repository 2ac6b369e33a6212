module.exports = {
  apps: [{ name: 'binary', script: './run.sh', interpreter: 'none' }],
};
